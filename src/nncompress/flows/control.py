"""The same-budget dense control: what a compressed model's accuracy must be compared with.

Compression pipelines train more than the dense model they start from (pruning retrains for tens of
epochs, Deep Compression then fine-tunes codebooks). Part of any "gain" over the dense model is
this extra training, not the compression: on mnist-10k, retraining LeNet-300-100 with the pruning
schedule at sparsity 0 gains about as much as pruning does (issue 16). So every compressed row is
compared with a *control*: the same dense model, trained through exactly the same phases (each
phase's `TrainConfig`: epochs, learning rate and schedule, optimizer, weight decay, seed; and the
same loader seed and batch size) with nothing compressed. The control therefore takes exactly
as many optimizer steps as pretraining + compression retraining (`StepCounter` checks it).

A phase list is plain data (`TrainingPhase`), built by the helpers below from the same settings the
flows use (`pretrain_phase` mirrors `flows.prune.dense_model`, `pruning_phases` mirrors
`prune_and_retrain`'s schedules, `codebook_phase` mirrors Deep Compression's codebook fine-tuning),
or by a recipe runner from its own stages. `same_budget_control(model, dataset, phases)` replays
them on a copy of the dense model.
"""
from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, replace

from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from ..batches import BatchData
from ..train import History, TrainConfig, fit, stderr_log
from ..validate import check_choice
from ..zoo import Dataset


@dataclass(frozen=True)
class TrainingPhase:
    """One call of `fit`: its config, the training loader's shuffle seed and batch size."""

    config: TrainConfig
    loader_seed: int
    batch_size: int = 64
    label: str = ""

    def steps(self, dataset: Dataset | BatchData) -> int:
        """Optimizer steps this phase takes on `dataset` (epochs x batches per epoch)."""
        return self.config.epochs * len(dataset.train_loader(self.batch_size, seed=self.loader_seed))

    def run(self, model: nn.Module, dataset: Dataset | BatchData, **fit_kwargs: object) -> History:
        """Train `model` in place for this phase (extra keywords go to `fit`, e.g. on_step, regularizers);
        its epoch lines go to `log` (default: stderr) under the phase's label."""
        if self.label:
            log = fit_kwargs.get("log") or stderr_log
            fit_kwargs["log"] = lambda message: log(f"{self.label}: {message}")
        return fit(model, dataset.train_loader(self.batch_size, seed=self.loader_seed), self.config, **fit_kwargs)


def pretrain_phase(base: TrainConfig, batch_size: int = 64) -> TrainingPhase:
    """The dense model's own training, as `flows.prune.dense_model` runs it (loader seed = config seed)."""
    return TrainingPhase(base, base.seed, batch_size, "pretrain")


def pruning_phases(base: TrainConfig, *, schedule: str = "iterative", rounds: int = 3, finetune_epochs: int = 5,
                   lr_factor: float = 0.1, batch_size: int = 64) -> list[TrainingPhase]:
    """The retraining phases `flows.prune.prune_and_retrain` runs for these settings: one-shot: one
    retraining; iterative: `rounds` retrainings (loader seeds seed+1000+k, k = 1..rounds); AGP: one
    run of max(finetune_epochs, 1) epochs. Learning rate: `lr_factor` x the original (Han 2015)."""
    check_choice("schedule", schedule, ("oneshot", "iterative", "agp"))
    config = replace(base, epochs=finetune_epochs, lr=base.lr * lr_factor)
    if schedule == "oneshot":
        return [TrainingPhase(config, base.seed + 1000, batch_size, "retrain")] if finetune_epochs else []
    if schedule == "iterative":
        if not finetune_epochs:
            return []
        return [TrainingPhase(config, base.seed + 1000 + k, batch_size, f"retrain {k}/{rounds}")
                for k in range(1, rounds + 1)]
    agp = replace(config, epochs=max(finetune_epochs, 1))
    return [TrainingPhase(agp, base.seed + 1000, batch_size, "agp retrain")]


def codebook_phase(epochs: int, lr: float, seed: int, batch_size: int = 64) -> list[TrainingPhase]:
    """Deep Compression's codebook fine-tuning (`flows.deep_compression.fine_tune_codebooks`):
    SGD at `lr`, no weight decay, loader seed seed+2000; none when `epochs` is 0."""
    if not epochs:
        return []
    return [TrainingPhase(TrainConfig(epochs=epochs, lr=lr, weight_decay=0.0, seed=seed), seed + 2000, batch_size,
                          "codebook fine-tune")]


def total_steps(phases: Sequence[TrainingPhase], dataset: Dataset | BatchData) -> int:
    """Optimizer steps of all `phases` on `dataset`."""
    return sum(phase.steps(dataset) for phase in phases)


def train_phases(model: nn.Module, dataset: Dataset | BatchData, phases: Sequence[TrainingPhase],
                 **fit_kwargs: object) -> list[History]:
    """Run `phases` on `model` in place, in order (extra keywords go to every `fit`)."""
    return [phase.run(model, dataset, progress=False, log=lambda _msg: None, **fit_kwargs) for phase in phases]


def same_budget_control(dense: nn.Module, dataset: Dataset | BatchData, phases: Sequence[TrainingPhase],
                        distill: object | None = None) -> tuple[nn.Module, dict]:
    """The dense control: a copy of the (already pretrained) `dense` model trained through `phases`
    (the compression pipeline's retraining phases, nothing compressed). Returns (control model,
    {"steps": optimizer steps taken, "epochs": epochs, "phases": labels}). `dense` is not changed.

    Pass the dense model *after* its pretraining and the phases of everything that came after it;
    `pretrain_phase(base) + phases` is then the whole budget of both the compressed model and the
    control. Example (LeNet-300-100, AGP pruning 40 epochs, then 3 codebook epochs):

        phases = pruning_phases(base, schedule="agp", finetune_epochs=40, lr_factor=1.0) + codebook_phase(3, 1e-3, seed)
        control, info = same_budget_control(dense, dataset, phases)

    `distill` (a `flows.distill.DistillConfig`): the compressed model was retrained distilling the
    dense model; the control is then trained with the same distillation from the same teacher (the
    pretrained `dense` itself: self-distillation), so the teacher's information is in both.
    """
    from .distill import distillation_kwargs

    control = copy.deepcopy(dense)
    fit_kwargs = distillation_kwargs(dense, distill, getattr(dataset, "forward_fn", None))
    with StepCounter() as counter:
        train_phases(control, dataset, phases, **fit_kwargs)
    control.eval()
    return control, {"steps": counter.steps, "epochs": sum(p.config.epochs for p in phases),
                     "phases": [p.label for p in phases], "distill": bool(fit_kwargs)}


class StepCounter:
    """Counts every optimizer step taken inside the `with` block (any optimizer, any caller), through
    torch's global optimizer step hook: the check that a control trains exactly as long."""

    def __init__(self) -> None:
        self.steps = 0
        self._handle = None

    def _hook(self, *_args: object) -> None:
        self.steps += 1

    def __enter__(self) -> StepCounter:
        self._handle = register_optimizer_step_post_hook(self._hook)
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._handle is not None:
            self._handle.remove()
