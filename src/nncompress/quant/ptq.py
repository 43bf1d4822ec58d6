"""Post-training quantization (seed 002 "Quantization post training"; seed 004 calibration).

- `LinearQuant`: weights (symmetric int, per tensor / channel / group, min-max or MSE ranges) and,
  with `act_bits`, static activations (affine uint, ranges from calibration observers) and int32
  biases with S_b = S_W S_X. `act_bits=None` is weight-only PTQ. `layer_bits` overrides the weight
  and activation bits per layer (e.g. keep the first and last layer at 8 bit).
- `DynamicQuant`: weights as above, activations quantized at run time (per tensor or per token).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..analysis.calibrate import observe_inputs
from ..analysis.observers import OBSERVERS, make_observer
from ..config import Context, Method
from ..parametrize import attach, original
from ..registry import register
from ..validate import check_choice, check_int_range
from .attention import unfuse_attention_
from .fake import FakeQuant, QuantInput, tensor_range
from .granularity import Granularity, granularity_from_name
from .primitives import IntSpec, choose_qparams, fake_quantize

WEIGHT_OBSERVERS = ("minmax", "mse")


def weight_range(w: torch.Tensor, spec: IntSpec, granularity: Granularity, observer: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Range of a weight at `granularity`: min-max, or the per-slice clip ratio minimising MSE."""
    r_min, r_max = tensor_range(w, granularity)
    if observer == "minmax":
        return r_min, r_max
    best_err = torch.full_like(r_max, float("inf"))
    best = (r_min.clone(), r_max.clone())
    q_min, q_max = spec.q_range
    grouped = granularity.group(w) if hasattr(granularity, "group") else w
    dims = (-1,) if hasattr(granularity, "group") else granularity.reduce_dims(w)
    for ratio in torch.linspace(0.3, 1.0, 71):
        scale, zp = choose_qparams(r_min * ratio, r_max * ratio, spec)
        err = ((fake_quantize(grouped, scale, zp, q_min, q_max) - grouped) ** 2).mean(dims, keepdim=True)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best = (torch.where(better, r_min * ratio, best[0]), torch.where(better, r_max * ratio, best[1]))
    return best


def quantize_weight_(layer: nn.Module, bits: int, granularity: Granularity, observer: str = "minmax") -> FakeQuant:
    """Attach a symmetric signed FakeQuant to `layer.weight` (after any mask already there)."""
    spec = IntSpec(bits=bits, signed=True, symmetric=True)
    w = layer.weight.detach()
    return attach(layer, FakeQuant.fit(w, spec, granularity, weight_range(w, spec, granularity, observer)))  # type: ignore[return-value]


def _check_bits(method: Method) -> None:
    check_int_range("weight_bits", method.weight_bits, 2, 16)
    if getattr(method, "act_bits", None) is not None:
        check_int_range("act_bits", method.act_bits, 2, 16)
    for name, bits in getattr(method, "layer_bits", {}).items():
        check_int_range(f"layer_bits[{name!r}]", bits, 2, 16)
    check_choice("granularity", method.granularity, ("tensor", "channel", "group"))


@register("linear")
@dataclass(frozen=True, kw_only=True)
class LinearQuant(Method):
    """Static post-training quantization: int weights, and uint activations calibrated on data.

    Args:
        weight_bits: weight bit-width (2..16), symmetric signed, restricted range.
        act_bits: activation bit-width (2..16), affine unsigned; None quantizes weights only.
        granularity: "tensor", "channel" (output channels) or "group" (`group_size` inputs).
        observer: activation ranges: minmax, ema, percentile, mse or entropy (weights use
            mse when observer is "mse", else min-max).
        layer_bits: per-layer bit-width for weights and activations, e.g. {"conv1": 8}.
    Example:
        >>> import nncompress as nc, torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 3))
        >>> _ = nc.quantize_(net, nc.LinearQuant(weight_bits=4, act_bits=None))
        >>> len(torch.unique(net[0].weight[0])) <= 15
        True
    """

    weight_bits: int = 8
    act_bits: int | None = 8
    granularity: str = "channel"
    group_size: int = 128
    observer: str = "minmax"
    layer_bits: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_bits(self)
        check_choice("observer", self.observer, OBSERVERS)

    @property
    def needs(self) -> frozenset[str]:  # type: ignore[override]
        return frozenset({"data"}) if self.act_bits is not None else frozenset()

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        unfuse_attention_(model)
        layers = self.targets.layers(model)
        if not layers:
            raise ValueError(f"LinearQuant: no layer matches {self.targets}")
        observers = {}
        if self.act_bits is not None:
            observers = {n: make_observer(self.observer, bits=self.layer_bits.get(n, self.act_bits)) for n in layers}
            observe_inputs(model, observers, ctx.data or [], max_batches=None)
        granularity = granularity_from_name(self.granularity, 0, self.group_size)
        weight_observer = "mse" if self.observer == "mse" else "minmax"
        for name, layer in layers.items():
            quantize_weight_(layer, self.layer_bits.get(name, self.weight_bits), granularity, weight_observer)
            if self.act_bits is not None:
                spec = IntSpec(bits=self.layer_bits.get(name, self.act_bits), signed=False, symmetric=False)
                scale, zero_point = choose_qparams(*observers[name].range(), spec)
                model.set_submodule(name, QuantInput(layer, spec, scale=scale, zero_point=zero_point))
        ctx.record(self, layers=list(layers))
        return model


@register("dynamic")
@dataclass(frozen=True, kw_only=True)
class DynamicQuant(Method):
    """Weights quantized ahead of time, activations at run time from each input's own range
    (per tensor, or per token: one scale per row, which tames outlier tokens)."""

    weight_bits: int = 8
    act_bits: int = 8
    granularity: str = "channel"
    group_size: int = 128
    per_token: bool = False

    def __post_init__(self) -> None:
        _check_bits(self)

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        unfuse_attention_(model)
        layers = self.targets.layers(model)
        granularity = granularity_from_name(self.granularity, 0, self.group_size)
        spec = IntSpec(bits=self.act_bits, signed=True, symmetric=False)
        for name, layer in layers.items():
            quantize_weight_(layer, self.weight_bits, granularity)
            model.set_submodule(name, QuantInput(layer, spec, per_token=self.per_token, quantize_bias=False))
        ctx.record(self, layers=list(layers))
        return model


def remove_quantization_(model: nn.Module) -> nn.Module:
    """Unwrap every QuantInput and drop FakeQuant parametrizations (masks stay); returns `model`."""
    for name, module in list(model.named_modules()):
        if isinstance(module, QuantInput):
            model.set_submodule(name, module.layer)
    for module in model.modules():
        if parametrize.is_parametrized(module, "weight"):
            plist = module.parametrizations.weight
            keep = [t for t in plist if not isinstance(t, FakeQuant)]
            if len(keep) != len(plist):
                w = original(module).detach().clone()
                parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
                module.weight.data.copy_(w)
                for t in keep:
                    attach(module, t)
    return model
