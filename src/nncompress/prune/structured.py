"""Structured pruning methods: output channels (filters), input channels and im2col columns.

Coarse-grained pruning ("Pruning granularity" in Yoo's lecture: a subset of the fine-grained choices,
"easy to accelerate (just a smaller matrix!)"):

- `ChannelPrune` removes whole output channels ranked by the L1 / L2 norm of their filters (Li et al.,
  "Pruning Filters for Efficient ConvNets", ICLR 2017). Channels are pruned per dependency group
  (`dependency.channel_groups`): the layers joined by a residual add drop the same channels, and the
  BatchNorm (and depthwise conv) that carry the channel are masked with it, so a pruned channel is
  exactly zero and `shrink.shrink_` can remove it without changing the outputs.
- `InputChannelPrune` removes input channels W[:, s] of each layer by their norm.
- `ColumnPrune` removes columns of the lowered (im2col) weight matrix, W[:, s, i, j], "whose sum of
  absolute weights < threshold" or the lowest fraction of them (the lecture's column pruning, which a
  zero-skipping accelerator turns into skipped cycles).

Every mask is a `StructuredMask` (a `Mask` constant along the units; one stored bit per unit).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import nn

from ..config import Context, Method
from ..registry import register
from ..validate import UserError, check_choice, check_positive
from .dependency import Group, channel_groups, example_inputs
from .masks import check_weight, density, global_masks_with_overrides, layer_masks
from .structures import NORMS, attach_structured_mask, check_mask_targets, structure_dims, unit_norms
from .unstructured import SparsityPrune, _targets, layer_overrides


def _keep_one(keep: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """At least one unit survives (an empty layer would disconnect the network)."""
    if not bool(keep.any()):
        keep = keep.clone()
        keep.view(-1)[int(torch.argmax(scores))] = True
    return keep


def check_round_to(round_to: int) -> None:
    """round_to must be a positive int (a bool or float is refused, YAML may give either)."""
    if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1:
        raise UserError(f"round_to must be a positive integer (channel counts kept as its multiples), got {round_to!r}")


def rounded_count(kept: int, total: int, round_to: int) -> int:
    """The number of channels to keep when counts must be multiples of `round_to`: the multiple of
    `round_to` in [round_to, total] nearest to `kept` (ties keep more), or `total` itself (a layer
    left whole) when that is nearer or no multiple fits. Monotone in `kept`, so an iterative schedule
    (rising sparsity) never needs back a channel an earlier round removed."""
    if round_to <= 1 or kept >= total:
        return kept if round_to <= 1 else total
    candidates = [m for m in range(round_to, total + 1, round_to)] + [total]
    return min(candidates, key=lambda c: (abs(c - kept), -c))


def round_keep(keep: torch.Tensor, scores: torch.Tensor, round_to: int) -> torch.Tensor:
    """`keep` with its count rounded by `rounded_count`: rounding down removes the weakest units `keep`
    kept, rounding up restores the strongest units it removed (ties by index, as `lowest_k_mask`)."""
    flat = keep.flatten()
    target = rounded_count(int(flat.sum()), flat.numel(), round_to)
    if target == int(flat.sum()):
        return keep
    by_score = torch.argsort(scores.detach().flatten().float(), stable=True)  # weakest first
    order = by_score[torch.argsort(flat[by_score].int(), stable=True)]  # removed units first, then weakest kept
    out = torch.ones_like(flat)
    out[order[:flat.numel() - target]] = False
    return out.view_as(keep)


def unit_masks(method: SparsityPrune, scores: dict[str, torch.Tensor], overrides: dict[str, float],
               round_to: int = 1) -> dict[str, torch.Tensor]:
    """Per-unit keep vectors removing `method.sparsity` of the units per layer (scope "layer") or of the
    pooled units ("global"), with per-layer overrides; every layer keeps at least one unit, and with
    `round_to` > 1 each layer's count is rounded by `rounded_count` (after the global threshold)."""
    if method.scope == "global":
        keeps = global_masks_with_overrides(scores, method.sparsity, overrides)
    else:
        keeps = layer_masks(scores, {n: overrides.get(n, method.sparsity) for n in scores})
    keeps = {n: _keep_one(k, scores[n]) for n, k in keeps.items()}
    return {n: round_keep(k, scores[n], round_to) for n, k in keeps.items()} if round_to > 1 else keeps


def group_tensors(model: nn.Module, group: Group) -> list[tuple[nn.Module, str, str]]:
    """(layer, tensor name, layer name) of every per-channel tensor a channel mask covers: producers'
    weight rows and biases, BatchNorm scales and shifts, depthwise convs' filters and biases."""
    modules = dict(model.named_modules())
    out = []
    for name in [*group.producers, *group.passthrough]:
        layer = modules[name]
        for tensor_name in ("weight", "bias"):
            if getattr(layer, tensor_name, None) is not None:
                out.append((layer, tensor_name, name))
    return out


def mask_channels(model: nn.Module, group: Group, keep: torch.Tensor) -> None:
    """Attach the channel keep vector to every per-channel tensor of `group`."""
    for layer, tensor_name, name in group_tensors(model, group):
        dims = structure_dims("channel", getattr(layer, tensor_name).dim())
        attach_structured_mask(layer, keep, dims, tensor_name=tensor_name, layer_name=name)


def channel_scores(model: nn.Module, group: Group, norm: str) -> torch.Tensor:
    """Importance of each channel of a group: the sum over its producers of the filter norms."""
    modules = dict(model.named_modules())
    return sum(unit_norms(modules[p].weight, (0,), norm) for p in group.producers)  # type: ignore[return-value]


def targeted_groups(method: Method, model: nn.Module, data) -> tuple[list[Group], dict[str, nn.Module]]:
    """The dependency groups whose producers are all targeted layers."""
    layers = method.targets.layers(model)
    for name, layer in layers.items():
        check_weight(layer.weight, name, type(method).__name__)
    groups = [g for g in channel_groups(model, example_inputs(data)) if all(p in layers for p in g.producers)]
    if not groups:
        warnings.warn(f"{type(method).__name__}: no prunable channel group among the targeted layers (every channel "
                      "reaches the model output, a concatenation or an operation the fx analysis does not know)",
                      stacklevel=3)
    return groups, layers


@register("channel")
@dataclass(frozen=True, kw_only=True)
class ChannelPrune(SparsityPrune):
    """Remove the `sparsity` fraction of output channels with the smallest filter norms, per
    dependency group (scope "layer") or by one threshold over all groups ("global").

    A group is named by its first producer layer (keys of `layer_sparsity`). Needs one example batch
    (`data`) to trace the model with torch.fx.

    Args:
        norm: "l2" (default) or "l1" norm of each filter; a group's channel score sums its producers'.
        round_to: keep a multiple of this many channels in every group (`rounded_count`: the nearest
            multiple, or the whole group), e.g. 16 so that CPU kernels that block channels by the
            vector width (oneDNN / ONNX Runtime NCHWc, 16 floats per AVX-512 register) waste no lanes
            on a shrunk model; 1 (default) keeps exactly the `sparsity` target. The realised MAC
            reduction then differs from the unrounded one: check it (`analysis.metrics.total_macs`).

    Example:
        >>> import nncompress as nc, torch
        >>> from nncompress.prune.shrink import shrink_
        >>> net = torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.ReLU(), torch.nn.Linear(6, 2))
        >>> x = torch.randn(4, 8)
        >>> _ = nc.prune_(net, ChannelPrune(sparsity=0.5), data=[x])
        >>> int((net[0].weight == 0).all(1).sum())  # 3 of fc1's 6 output rows (and their biases)
        3
        >>> before = net(x)
        >>> _ = shrink_(net, x)
        >>> net[0].out_features, net[2].in_features, torch.allclose(net(x), before)
        (3, 3, True)
    """

    needs = frozenset({"data"})
    norm: str = "l2"
    round_to: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("norm", self.norm, NORMS)
        check_round_to(self.round_to)

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        groups, layers = targeted_groups(self, model, ctx.data)
        named = {g.producers[0]: g for g in groups}
        overrides = layer_overrides(self, {n: layers[n] for n in named})
        scores = {n: channel_scores(model, g, self.norm) for n, g in named.items()}
        keeps = unit_masks(self, scores, overrides, self.round_to)
        check_mask_targets([t for g in groups for t in group_tensors(model, g)])
        for name, group in named.items():
            mask_channels(model, group, keeps[name])
        kept = sum(int(k.sum()) for k in keeps.values())
        total = sum(k.numel() for k in keeps.values())
        ctx.record(self, channels_kept={n: int(k.sum()) for n, k in keeps.items()},
                   groups={n: g.producers for n, g in named.items()}, channel_sparsity=1 - kept / max(total, 1))
        return model


def _layer_units(method: SparsityPrune, model: nn.Module, ctx: Context, structure: str,
                 score_fn) -> nn.Module:
    """Shared body of the per-layer structures: score units, keep, mask, report."""
    layers = _targets(method, model)
    overrides = layer_overrides(method, layers)
    dims = {n: structure_dims(structure, layer.weight.dim()) for n, layer in layers.items()}
    scores = {n: score_fn(layer.weight, dims[n]) for n, layer in layers.items()}
    keeps = unit_masks(method, scores, overrides)
    check_mask_targets([(layer, "weight", n) for n, layer in layers.items()])
    for n, layer in layers.items():
        attach_structured_mask(layer, keeps[n], dims[n], layer_name=n)
    kept = sum(int(k.sum()) for k in keeps.values())
    total = sum(k.numel() for k in keeps.values())
    ctx.record(method, structure=structure, densities={n: density(k) for n, k in keeps.items()},
               unit_sparsity=1 - kept / max(total, 1))
    return model


@register("input_channel")
@dataclass(frozen=True, kw_only=True)
class InputChannelPrune(SparsityPrune):
    """Remove the `sparsity` fraction of each layer's input channels W[:, s] with the smallest norms
    (a Linear's input features); fields as SparsityPrune plus `norm` ("l2" or "l1")."""

    norm: str = "l2"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("norm", self.norm, NORMS)

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        return _layer_units(self, model, ctx, "input_channel", lambda w, dims: unit_norms(w, dims, self.norm))


@register("column")
@dataclass(frozen=True, kw_only=True)
class ColumnPrune(SparsityPrune):
    """Prune columns of the lowered weight matrix W_mat (out x in*kh*kw), scored by their sum of
    absolute weights: either the `sparsity` fraction with the lowest sums, or, with `threshold`, every
    column whose sum is below it ("Prune columns whose sum of absolute weights < threshold"; then
    fine-tune, and repeat while the accuracy holds). A Linear's columns are its input features.
    """

    sparsity: float = 0.0
    threshold: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.threshold is not None:
            check_positive("threshold", self.threshold)
            if self.sparsity or self.layer_sparsity:
                raise UserError("ColumnPrune: give either threshold or sparsity / layer_sparsity, not both")

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        if self.threshold is None:
            return _layer_units(self, model, ctx, "column", lambda w, dims: unit_norms(w, dims, "l1"))
        layers = _targets(self, model)
        check_mask_targets([(layer, "weight", n) for n, layer in layers.items()])
        densities = {}
        for n, layer in layers.items():
            dims = structure_dims("column", layer.weight.dim())
            sums = unit_norms(layer.weight, dims, "l1")
            keep = _keep_one(sums >= self.threshold, sums)
            attach_structured_mask(layer, keep, dims, layer_name=n)
            densities[n] = density(keep)
        ctx.record(self, structure="column", threshold=self.threshold, densities=densities)
        return model
