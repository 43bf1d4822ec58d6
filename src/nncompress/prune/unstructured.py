"""Fine-grained (unstructured) pruning methods: magnitude, Han's std threshold, random control.

Magnitude-based pruning (importance = |W|; "Magnitude-based pruning" in Yoo, "Compressing Neural Networks:
Pruning and Quantization", SNU 2023; Han et al., "Learning both Weights and Connections for Efficient
Neural Networks", NeurIPS 2015): prune the connections with the smallest |w|, per layer or with one
threshold across layers ("global"), then retrain. Per-layer targets
(`layer_sparsity`) work in both scopes: under "global" the overridden layers keep their own target
and the others share one threshold.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from ..config import Context, Method, per_layer
from ..registry import register
from ..validate import UserError, check_choice, check_fraction, check_positive
from ..parametrize import check_attachable
from .mask import attach_mask
from .masks import (check_weight, density, global_masks_with_overrides, layer_masks, magnitude_scores, random_scores,
                    threshold_mask)


def _targets(method: Method, model: nn.Module) -> dict[str, nn.Module]:
    """The targeted layers; every weight non-empty and finite (NaN would survive its mask, NaN * 0 =
    NaN, and poison a global threshold)."""
    layers = method.targets.layers(model)
    if not layers:
        raise UserError(f"{type(method).__name__}: no layer matches {method.targets}")
    for name, layer in layers.items():
        check_weight(layer.weight, name, type(method).__name__)
    return layers


def apply_masks(method: Method, ctx: Context, layers: dict[str, nn.Module], masks: dict[str, torch.Tensor]) -> None:
    """Attach the masks and record each layer's density in the report."""
    for name, layer in layers.items():  # all or nothing: check every layer before zeroing any weight
        check_attachable(layer, "mask", layer_name=name)
    for name, layer in layers.items():
        attach_mask(layer, masks[name], layer_name=name)
    kept = sum(int(m.sum()) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    ctx.record(method, densities={n: density(m) for n, m in masks.items()}, sparsity=1 - kept / total)


def _score_and_mask(method: SparsityPrune, model: nn.Module, ctx: Context,
                    score: Callable[[torch.Tensor], torch.Tensor]) -> nn.Module:
    layers = _targets(method, model)
    overrides = layer_overrides(method, layers)
    scores = {name: score(layer.weight) for name, layer in layers.items()}
    if method.scope == "global":
        masks = global_masks_with_overrides(scores, method.sparsity, overrides)
    else:
        masks = layer_masks(scores, {n: overrides.get(n, method.sparsity) for n in layers})
    apply_masks(method, ctx, layers, masks)
    return model


def layer_overrides(method: SparsityPrune, layers: dict[str, nn.Module]) -> dict[str, float]:
    """The targeted layers that `method.layer_sparsity` overrides (keys: a name, "re:<regex>" or
    "type:<Class>"), with their target; a plain name that is not targeted is a UserError with a
    did-you-mean and the list of targeted layers."""
    resolved = per_layer(method.layer_sparsity, layers, None, "layer_sparsity")
    return {name: target for name, target in resolved.items() if target is not None}


@dataclass(frozen=True, kw_only=True)
class SparsityPrune(Method):
    """Base of the pruning methods that reach a sparsity target: the explicit contract the
    iterative and AGP schedules rely on (they ramp `sparsity` and every `layer_sparsity` value).

    Args:
        sparsity: fraction of targeted weights set to zero, in [0, 1).
        scope: "layer" (each layer loses `sparsity`) or "global" (one threshold across layers).
        layer_sparsity: per-layer targets by layer pattern (a name, "re:<regex>" or "type:<Class>"),
            e.g. {"fc3": 0.75}. With scope="global" these layers get exactly their own target and
            the others share one threshold that removes `sparsity` of their (non-overridden) weights.
    """

    sparsity: float
    scope: str = "layer"
    layer_sparsity: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_fraction("sparsity", self.sparsity)
        check_choice("scope", self.scope, ("layer", "global"))
        for name, value in self.layer_sparsity.items():
            check_fraction(f"layer_sparsity[{name!r}]", value)

    def at_sparsity(self, ramp: Callable[[float], float]) -> SparsityPrune:
        """This method with every target s replaced by ramp(s) (the per-layer ones too)."""
        return dataclasses.replace(self, sparsity=ramp(self.sparsity),
                                   layer_sparsity={n: ramp(s) for n, s in self.layer_sparsity.items()})


@register("magnitude")
@dataclass(frozen=True, kw_only=True)
class MagnitudePrune(SparsityPrune):
    """Remove the `sparsity` fraction of weights with the smallest |w| (fields: see SparsityPrune).

    Example:
        >>> import nncompress as nc, torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(8, 4))
        >>> _ = nc.prune_(net, nc.MagnitudePrune(sparsity=0.5))
        >>> int((net[0].weight == 0).sum())
        16
    """

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        return _score_and_mask(self, model, ctx, magnitude_scores)


@register("random")
@dataclass(frozen=True, kw_only=True)
class RandomPrune(SparsityPrune):
    """Remove a random `sparsity` fraction of weights: the control any criterion must beat."""

    seed: int = 0

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        generator = torch.Generator().manual_seed(self.seed)
        return _score_and_mask(self, model, ctx, lambda w: random_scores(w, generator))


@register("threshold")
@dataclass(frozen=True, kw_only=True)
class ThresholdPrune(Method):
    """Han et al. 2015: per layer, remove weights with |w| <= quality x std(w)."""

    quality: float

    def __post_init__(self) -> None:
        check_positive("quality", self.quality)

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        layers = _targets(self, model)
        apply_masks(self, ctx, layers, {n: threshold_mask(layer.weight, self.quality) for n, layer in layers.items()})
        return model
