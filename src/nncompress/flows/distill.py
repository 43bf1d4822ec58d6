"""Knowledge distillation from the dense model during compression retraining (Hinton et al. 2015).

A compressed model retrained on the hard labels alone forgets what the dense model knew about the
classes it confuses; retraining it to also match the dense model's softened outputs is the standard
remedy (used with pruning and quantization since Hinton 2015, e.g. Polino et al. 2018 "Model
compression via distillation and quantization", Mishra & Marr 2018 "Apprentice"). The loss of a
batch (x, y) with teacher logits t and student logits s is

    (1 - alpha) CE(s, y) + alpha T^2 KL(softmax(t / T) || softmax(s / T))

(the T^2 keeps the soft term's gradient scale independent of T). `Distillation.fit_kwargs()` gives
the `forward_fn` / `loss_fn` pair `train.fit` takes: the forward pass also runs the frozen teacher
(in eval mode, no gradient) on the same inputs and keeps its logits for the loss.

Honest comparison: a compressed model trained with distillation gets extra information from the
teacher, so its same-budget dense control (`flows/control.py`) is trained with the *same*
distillation (the dense model distilled from its own pretrained copy: self-distillation) when
`same_budget_control(..., distill=...)` is given it.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from ..batches import ForwardFn, feed, output_tensor
from ..train import cross_entropy
from ..validate import UserError


@dataclass(frozen=True)
class DistillConfig:
    """`alpha`: weight of the soft (teacher) term, in [0, 1]; 0 turns distillation off.
    `temperature`: the softmax temperature T of both teacher and student."""

    alpha: float = 0.0
    temperature: float = 4.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise UserError(f"distillation alpha={self.alpha} must be in [0, 1]")
        if not self.temperature > 0:
            raise UserError(f"distillation temperature={self.temperature} must be > 0")

    @property
    def enabled(self) -> bool:
        return self.alpha > 0


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor, target: torch.Tensor, alpha: float,
                      temperature: float) -> torch.Tensor:
    """(1 - alpha) CE(student, target) + alpha T^2 KL(softmax(teacher/T) || softmax(student/T)), batch mean."""
    soft = F.kl_div(F.log_softmax(student / temperature, dim=1), F.log_softmax(teacher / temperature, dim=1),
                    reduction="batchmean", log_target=True) * temperature ** 2
    if alpha >= 1.0:
        return soft
    return (1 - alpha) * cross_entropy(student, target) + alpha * soft


class Distillation:
    """A frozen copy of `teacher` and the fit hooks that distil it into the trained model. `forward_fn`:
    how both models are fed (the data's own, e.g. `BatchData.forward_fn`; fit's `forward_fn` is this
    object's, so a forward bound to the batches would otherwise be dropped)."""

    def __init__(self, teacher: nn.Module, config: DistillConfig, forward_fn: ForwardFn | None = None):
        self.config, self.inner = config, forward_fn
        self.teacher = copy.deepcopy(teacher).eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self._teacher_logits: torch.Tensor | None = None

    def forward(self, model: nn.Module, batch: object) -> object:
        output = feed(model, batch, self.inner)
        with torch.no_grad():
            self._teacher_logits = output_tensor(feed(self.teacher, batch, self.inner)).detach()
        return output

    def loss(self, output: object, target: object) -> torch.Tensor:
        teacher, self._teacher_logits = self._teacher_logits, None
        if teacher is None:  # called without our forward (e.g. an evaluation): the plain loss
            return cross_entropy(output, target)
        return distillation_loss(output_tensor(output), teacher, target, self.config.alpha, self.config.temperature)

    def fit_kwargs(self) -> dict:
        """Keywords for `train.fit` (none when distillation is off)."""
        return {"forward_fn": self.forward, "loss_fn": self.loss} if self.config.enabled else {}


def distillation_kwargs(teacher: nn.Module | None, config: DistillConfig | None, forward_fn: ForwardFn | None = None
                        ) -> dict:
    """`train.fit` keywords distilling `teacher` with `config` ({} when either is missing or alpha is 0);
    `forward_fn` feeds both models (the data's own forward, if it has one)."""
    if teacher is None or config is None or not config.enabled:
        return {}
    return Distillation(teacher, config, forward_fn).fit_kwargs()
