"""Network slimming (Liu et al., "Learning Efficient Convolutional Networks through Network Slimming",
ICCV 2017; "Scaling-based pruning" in Yoo's lecture): the BatchNorm scale gamma of each channel is its
scaling factor. Train with an L1 penalty on the scales,

    L = sum loss(f(x, W), y) + s * sum_{gamma in Gamma} |gamma|,

so unimportant channels get gamma near zero, then prune the channels with the smallest |gamma| under
one global threshold (a channel mask on the producing conv and the BatchNorm, gamma and beta both:
the pruned channel outputs exactly zero and `shrink_` can remove it), and fine-tune.

A channel group joined by residual adds has several BatchNorms; its scaling factor is the mean of
their |gamma|. Groups without a BatchNorm have no scaling factor and are left alone.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..config import Context
from ..registry import register
from ..train import TrainConfig, make_optimizer
from ..validate import UserError, check_int_range, check_positive
from .dependency import NORMS
from .structured import check_round_to, group_tensors, mask_channels, targeted_groups, unit_masks
from .structures import check_mask_targets
from .unstructured import SparsityPrune


def bn_scale_penalty(model: nn.Module, strength: float) -> torch.Tensor:
    """s * sum |gamma| over every affine BatchNorm of `model` (Liu et al. 2017, eq. 1)."""
    scales = [m.weight for m in model.modules() if isinstance(m, NORMS) and m.weight is not None]
    if not scales:
        return torch.zeros(())
    return strength * sum(g.abs().sum() for g in scales)  # type: ignore[return-value]


#: Liu et al.'s CIFAR schedule (Sec. 5.2): s = 1e-4, 160 epochs with mini-batch 64 (50,000 / 64 = 782
#: steps per epoch), lr 0.1 divided by 10 at 50% and 75% of the epochs, SGD momentum 0.9. The sum of
#: the learning rates over all steps (how far the L1 term moves a |gamma| is s x this / (1 - momentum)):
PAPER_SCHEDULE_LR_SUM = 160 * 782 * 0.1 * (0.5 + 0.25 * 0.1 + 0.25 * 0.01)
PAPER_PENALTY = 1e-4


def epoch_learning_rates(config: TrainConfig) -> list[float]:
    """The learning rate of each epoch of `fit(..., config)` (the schedule steps once per epoch)."""
    opt, sched = make_optimizer(nn.Linear(1, 1), config)
    rates = []
    for _ in range(config.epochs):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return rates


def matched_penalty(config: TrainConfig, steps_per_epoch: int) -> float:
    """The L1 strength s that lets sparsity training under `config` move each |gamma| as far as Liu
    et al.'s s = 1e-4 did over their 160-epoch schedule: s x (sum over steps of lr) / (1 - momentum)
    equal on both sides. A short run on a small data set needs a much larger s than 1e-4 (5 epochs of
    125 steps at a cosine lr from 0.05: s = 0.035), else the scales barely move and slimming is plain
    |gamma| pruning. SGD only (Adam rescales every step)."""
    if config.optimizer != "sgd":
        raise UserError(f"matched_penalty: optimizer {config.optimizer!r} - the L1 drift is matched for SGD only; "
                        "give the penalty explicitly")
    check_int_range("steps_per_epoch", steps_per_epoch, 1, 1 << 30)
    lr_sum = steps_per_epoch * sum(epoch_learning_rates(config)) / (1 - config.momentum)
    if lr_sum <= 0:
        raise UserError("matched_penalty: the schedule has no training step (epochs=0)")
    return PAPER_PENALTY * PAPER_SCHEDULE_LR_SUM / (1 - 0.9) / lr_sum


def channel_scaling_factors(model: nn.Module, norm_layers: list[str]) -> torch.Tensor:
    """Mean |gamma| per channel over the given BatchNorm layers."""
    modules = dict(model.named_modules())
    return torch.stack([modules[n].weight.detach().abs().float() for n in norm_layers]).mean(0)


@register("slimming")
@dataclass(frozen=True, kw_only=True)
class NetworkSlimming(SparsityPrune):
    """Prune the `sparsity` fraction of BatchNorm'd channels with the smallest |gamma|: one global
    threshold by default (scope "global", as in the paper) or per group (scope "layer").

    Args:
        penalty: s, the L1 strength on the scales used by `regularizers` (Liu et al.: 1e-4 for VGG,
            1e-5 for ResNet / DenseNet).
        round_to: keep a multiple of this many channels per group, after the global threshold
            (`structured.rounded_count`; see `ChannelPrune.round_to`).
    """

    needs = frozenset({"data"})
    scope: str = "global"
    penalty: float = 1e-4
    round_to: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive("penalty", self.penalty)
        check_round_to(self.round_to)
        if self.layer_sparsity:
            raise UserError("NetworkSlimming uses one global threshold (or one fraction per group); "
                            "layer_sparsity is not supported")

    def regularizers(self, model: nn.Module) -> list[Callable[[nn.Module], torch.Tensor]]:
        """[model -> s * sum |gamma|] (sparsity training before `apply`)."""
        strength = self.penalty

        def bn_l1(net: nn.Module) -> torch.Tensor:
            return bn_scale_penalty(net, strength)
        return [bn_l1]

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        groups, _ = targeted_groups(self, model, ctx.data)
        modules = dict(model.named_modules())
        scaled = {g.producers[0]: g for g in groups
                  if any(isinstance(modules[n], NORMS) and modules[n].weight is not None for n in g.passthrough)}
        if not scaled:
            ctx.record(self, channels_pruned=0, channels=0, note="no BatchNorm'd channel group to slim")
            return model
        scores = {n: channel_scaling_factors(model, [p for p in g.passthrough if isinstance(modules[p], NORMS)])
                  for n, g in scaled.items()}
        keeps = unit_masks(self, scores, {}, self.round_to)
        check_mask_targets([t for g in scaled.values() for t in group_tensors(model, g)])
        for name, group in scaled.items():
            mask_channels(model, group, keeps[name])
        total = sum(k.numel() for k in keeps.values())
        kept = sum(int(k.sum()) for k in keeps.values())
        threshold = max((float(s[~k].max()) for s, k in zip(scores.values(), keeps.values()) if (~k).any()), default=0.0)
        ctx.record(self, channels_pruned=total - kept, channels=total, threshold=threshold,
                   channels_kept={n: int(k.sum()) for n, k in keeps.items()})
        return model
