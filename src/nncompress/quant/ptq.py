"""Post-training quantization (lecture "Quantization post training"; calibration lecture).

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

from ..analysis.calibrate import observe_inputs
from ..analysis.observers import OBSERVERS, make_observer
from ..config import Context, Method, per_layer
from ..parametrize import CompositionError, attach, check_attachable, detach, find_transform, original, transforms
from ..registry import register
from ..validate import UserError, check_choice, check_int_range
from .attention import unfuse_attention_
from .activation import DynamicQuantizer, StaticQuantizer, attach_input_quantizer, detach_input_quantizer, input_quantizer
from .fake import BiasQuant, FakeQuant, tensor_range
from .granularity import Granularity, PerGroup, granularity_from_name
from .primitives import IntSpec, choose_qparams, fake_quantize

WEIGHT_OBSERVERS = ("minmax", "mse")
LOOKUP_LAYERS = (nn.Embedding, nn.EmbeddingBag)  # weights quantized per row; no activation to quantize


def weight_range(w: torch.Tensor, spec: IntSpec, granularity: Granularity, observer: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Range of a weight at `granularity`: min-max, or the per-slice clip ratio minimising MSE."""
    r_min, r_max = tensor_range(w, granularity)
    if observer == "minmax":
        return r_min, r_max
    best_err = torch.full_like(r_max, float("inf"))
    best = (r_min.clone(), r_max.clone())
    q_min, q_max = spec.q_range
    grouped = granularity.group(w) if isinstance(granularity, PerGroup) else w
    dims = (-1,) if isinstance(granularity, PerGroup) else granularity.reduce_dims(w)
    for ratio in torch.linspace(0.3, 1.0, 71):
        scale, zp = choose_qparams(r_min * ratio, r_max * ratio, spec)
        err = ((fake_quantize(grouped, scale, zp, q_min, q_max) - grouped) ** 2).mean(dims, keepdim=True)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best = (torch.where(better, r_min * ratio, best[0]), torch.where(better, r_max * ratio, best[1]))
    return best


def quantize_weight_(layer: nn.Module, bits: int, granularity: Granularity, observer: str = "minmax",
                     layer_name: str = "") -> FakeQuant:
    """Attach a symmetric signed FakeQuant to `layer.weight` (after any mask already there)."""
    spec = IntSpec(bits=bits, signed=True, symmetric=True)
    w = layer.weight.detach()
    quant = FakeQuant.fit(w, spec, granularity, weight_range(w, spec, granularity, observer))
    return attach(layer, quant, layer_name=layer_name)  # type: ignore[return-value]


def quantize_bias_(layer: nn.Module, layer_name: str = "") -> BiasQuant | None:
    """Put `layer.bias` on the int32 grid S_b = S_W S_X (per output channel) when the weight is
    quantized per tensor or channel and the input statically; group-wise weights keep a float bias
    (a group kernel rescales each group's int32 partial sum by its own S_W, then adds the bias)."""
    weight_quant = find_transform(layer, FakeQuant)
    act_quant = input_quantizer(layer)
    bias = getattr(layer, "bias", None)
    if bias is None or weight_quant is None or act_quant is None or not act_quant.static:
        return None
    if isinstance(weight_quant.granularity, PerGroup):
        return None
    weight_scale = weight_quant.scale.flatten()
    bias_scale = weight_scale.expand(bias.numel()) * act_quant.scale.flatten()  # type: ignore[union-attr]
    return attach(layer, BiasQuant(bias_scale), "bias", layer_name=layer_name)  # type: ignore[return-value]


def quantizable_layers(method: Method, model: nn.Module, *, activations: bool) -> dict[str, nn.Module]:
    """The layers `method` targets, after checking that none is quantized already (so a refused call
    changes nothing) and, for activation quantization, unfusing torch's attention first."""
    for name, layer in method.targets.layers(model).items():
        check_attachable(layer, "quantizer", layer_name=name, new=type(method).__name__)
        if activations and input_quantizer(layer) is not None:
            raise CompositionError(f"{name}: its input is already quantized ({input_quantizer(layer).extra_repr()}); "
                                   "call nc.remove_quantization_(model) first, or leave the layer out with "
                                   "targets=Select(exclude=...)")
    if activations:
        unfuse_attention_(model)
    layers = method.targets.layers(model)
    if not layers:
        raise UserError(f"{type(method).__name__}: no layer matches {method.targets}")
    return layers


def check_quant_fields(weight_bits: int, act_bits: int | None, granularity: str, group_size: int,
                       layer_bits: dict[str, int] | None = None) -> None:
    """Validate the fields LinearQuant and DynamicQuant share (UserError naming field and range)."""
    check_int_range("weight_bits", weight_bits, 2, 16)
    if act_bits is not None:
        check_int_range("act_bits", act_bits, 2, 16)
    for name, bits in (layer_bits or {}).items():
        check_int_range(f"layer_bits[{name!r}]", bits, 2, 16)
    check_choice("granularity", granularity, ("tensor", "channel", "group"))
    check_int_range("group_size", group_size, 1, 1 << 16)


@register("linear")
@dataclass(frozen=True, kw_only=True)
class LinearQuant(Method):
    """Static post-training quantization: int weights, and uint activations calibrated on data.

    Args:
        weight_bits: weight bit-width (2..16), symmetric signed, restricted range.
        act_bits: activation bit-width (2..16), affine unsigned; None quantizes weights only.
        granularity: "tensor", "channel" (output channels) or "group" (`group_size` inputs).
        targets: Linear / Conv layers by default; add "Embedding" to `Select.types` to store
            embedding tables per row in `weight_bits` too (their integer inputs stay as they are).
        observer: activation ranges: minmax, ema, percentile, mse or entropy (weights use
            mse when observer is "mse", else min-max).
        layer_bits: per-layer bit-width for weights and activations by layer pattern, e.g.
            {"conv1": 8, "re:head.*": 8} (a name, "re:<regex>" or "type:<Class>").
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
        check_quant_fields(self.weight_bits, self.act_bits, self.granularity, self.group_size, self.layer_bits)
        check_choice("observer", self.observer, OBSERVERS)

    @property
    def needs(self) -> frozenset[str]:  # type: ignore[override]
        return frozenset({"data"}) if self.act_bits is not None else frozenset()

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        layers = quantizable_layers(self, model, activations=self.act_bits is not None)
        weight_bits = per_layer(self.layer_bits, layers, self.weight_bits, "layer_bits")
        act_bits = per_layer(self.layer_bits, layers, self.act_bits, "layer_bits")
        observers = {}
        if self.act_bits is not None:  # embedding lookups take integer ids: their weights only
            observers = {n: make_observer(self.observer, bits=act_bits[n]) for n, m in layers.items()
                         if not isinstance(m, LOOKUP_LAYERS)}
            observe_inputs(model, observers, ctx.data or [], max_batches=None)
        granularity = granularity_from_name(self.granularity, 0, self.group_size)
        weight_observer = "mse" if self.observer == "mse" else "minmax"
        for name, layer in layers.items():
            quantize_weight_(layer, weight_bits[name], granularity, weight_observer, layer_name=name)
            if name in observers:
                spec = IntSpec(bits=act_bits[name], signed=False, symmetric=False)
                scale, zero_point = choose_qparams(*observers[name].range(), spec)
                attach_input_quantizer(layer, StaticQuantizer(spec, scale, zero_point), layer_name=name)
                quantize_bias_(layer, layer_name=name)
        ctx.record(self, layers=list(layers), weight_bits=weight_bits, act_bits=act_bits if self.act_bits else None)
        return model


@register("dynamic")
@dataclass(frozen=True, kw_only=True)
class DynamicQuant(Method):
    """Weights quantized ahead of time, activations at run time from each input's own range.

    `per_token=True`: one scale per token (row) of a Linear's input, which tames outlier tokens;
    Conv layers then get one scale per image (a scale must not vary along the summed C, kh, kw
    dimensions, or no integer kernel could apply it after the int32 accumulation).
    """

    weight_bits: int = 8
    act_bits: int = 8
    granularity: str = "channel"
    group_size: int = 128
    per_token: bool = False

    def __post_init__(self) -> None:
        check_quant_fields(self.weight_bits, self.act_bits, self.granularity, self.group_size)

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        layers = quantizable_layers(self, model, activations=True)
        granularity = granularity_from_name(self.granularity, 0, self.group_size)
        spec = IntSpec(bits=self.act_bits, signed=True, symmetric=False)
        for name, layer in layers.items():
            quantize_weight_(layer, self.weight_bits, granularity, layer_name=name)
            per = ("token" if isinstance(layer, nn.Linear) else "sample") if self.per_token else "tensor"
            attach_input_quantizer(layer, DynamicQuantizer(spec, per), layer_name=name)
        ctx.record(self, layers=list(layers))
        return model


def remove_quantization_(model: nn.Module) -> nn.Module:
    """Remove every activation quantizer and every weight / bias transform whose role is
    "quantizer" (linear, k-means, float formats...); masks stay. SmoothQuant's scaling of the weight
    columns is undone with its divisor, so the model computes the float function again."""
    for module in model.modules():
        quantizer = detach_input_quantizer(module)
        for tensor_name in ("weight", "bias"):
            quantizers = tuple({type(t) for t in transforms(module, tensor_name) if getattr(t, "role", "") == "quantizer"})
            if quantizers:
                detach(module, quantizers, tensor_name)
        if quantizer is not None and quantizer.smooth is not None:
            with torch.no_grad():
                original(module).div_(quantizer.smooth)
    return model
