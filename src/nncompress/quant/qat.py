"""Quantization-aware training (QAT): the shared machinery of the STE, PACT and LSQ methods (lecture
"Quantization-Aware Training (QAT) in a Nutshell" and "Straight-Through Estimator (STE)" in seeds 000;
Jacob et al., CVPR 2018; Krishnamoorthi 2018).

QAT keeps float "shadow" weights and trains through fake quantizers: the forward pass computes with
the quantized weights and activations, the backward pass treats rounding as the identity (STE), and
the optimizer updates the float weights, which accumulate updates smaller than one grid step. A QAT
method attaches to every targeted Linear / Conv layer
- a weight quantizer (a parametrization whose `encode` is kind "linear": convert_ stores the codes),
- an input (activation) quantizer, static after training so the integer engine can read its grid,
- `TiedBiasQuant`: the bias on the int32 grid S_b = S_W S_X of the *current* (learned) scales, so the
  converted layer's bias is what the integer engine adds to its accumulator.
Then the model is fine-tuned (`flows/qat.py`) and `convert_` stores the integer codes.

Methods here: `STEQuant` ("ste": LinearQuant's grids, min-max weights and calibrated activations, kept
fixed while the weights fine-tune through the STE). PACT (`pact.py`) and LSQ (`lsq.py`) learn their
activation clipping level / step sizes and subclass `QATMethod`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from ..analysis.calibrate import observe_inputs
from ..analysis.observers import ValueSample
from ..config import Context, Method, per_layer
from ..parametrize import WeightTransform, attach, transforms
from ..registry import register
from ..validate import UserError, check_choice
from .activation import ActQuantizer, StaticQuantizer, attach_input_quantizer, input_quantizer
from .fake import INT32_RANGE, BiasQuant, FakeQuant
from .granularity import Granularity, granularity_from_name
from .primitives import IntSpec, choose_qparams, round_ste
from .ptq import LOOKUP_LAYERS, check_quant_fields, quantizable_layers, weight_range


def freezable_codes(transform: nn.Module, out: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """`out`, except where `transform.frozen`: there frozen_codes * step (no gradient to the weight).
    Oscillation freezing (Nagel et al., ICML 2022) sets `frozen` / `frozen_codes`."""
    frozen = transform.frozen
    if not bool(frozen.any()):
        return out
    return torch.where(frozen, transform.frozen_codes.float() * step, out)


def weight_scale(layer: nn.Module) -> torch.Tensor | None:
    """The (detached) scale of the last weight quantizer of `layer` with a linear grid, one per
    output channel or one in all; None if the weight has none."""
    for t in reversed(transforms(layer)):
        linear = getattr(t, "encoded_kind", getattr(t, "kind", "")) == "linear"  # a Stored one after convert_
        if linear and getattr(t, "role", "") in ("quantizer", "stored"):
            return t.scale.detach().flatten()
    return None


class TiedBiasQuant(BiasQuant):
    """The bias on the int32 grid S_b = S_W S_X of the layer's current weight and input scales.

    Like `BiasQuant` (encode kind "int32_bias"), but the scale follows the learned step sizes while
    they train (it is recomputed on every call, detached: the bias passes its gradient straight
    through, the steps get none from it). The layer is held in a plain list, not as a submodule.
    """

    def __init__(self, layer: nn.Module):
        scale = self._scale_of(layer, layer.bias.shape[0])
        if scale is None:
            raise UserError("TiedBiasQuant needs a linear weight quantizer and an input quantizer on the layer first")
        super().__init__(scale)
        self._layer = [layer]

    @staticmethod
    def _scale_of(layer: nn.Module, channels: int) -> torch.Tensor | None:
        s_w, act = weight_scale(layer), input_quantizer(layer)
        if s_w is None or act is None:
            return None
        return (s_w.expand(channels) * act.scale.detach().reshape(())).float()

    def _refresh(self) -> None:
        """Follow the current scales; once the weight quantizer or the input quantizer is gone
        (`squash_` removes the weight's first), keep the last ones."""
        scale = self._scale_of(self._layer[0], self.scale.numel())
        if scale is not None:
            with torch.no_grad():
                self.scale.copy_(scale)

    def forward(self, b: torch.Tensor) -> torch.Tensor:
        self._refresh()
        return torch.clamp(round_ste(b / self.scale), *INT32_RANGE) * self.scale

    def encode(self, b: torch.Tensor):
        self._refresh()
        return super().encode(b)

    def extra_repr(self) -> str:
        return "int32, S_b = S_W S_X (tied to the learned scales)"


class _InputStats:
    """Calibration statistics of one layer input: min, max, mean |x|, features per sample, and a
    bounded random sample of the values (SAMPLE_PER_BATCH per batch, seeded) for MSE step searches."""

    SAMPLE_PER_BATCH = 8192

    def __init__(self) -> None:
        self.min, self.max, self.abs_sum, self.count, self.features = float("inf"), float("-inf"), 0.0, 0, 0
        self.sample = ValueSample(per_batch=self.SAMPLE_PER_BATCH)

    def observe(self, x: torch.Tensor) -> None:
        x = x.detach().float()
        self.min, self.max = min(self.min, float(x.min())), max(self.max, float(x.max()))
        self.abs_sum += float(x.abs().sum())
        self.count += x.numel()
        self.features = x[0].numel() if x.dim() > 1 else x.numel()
        self.sample.add(x)

    def as_dict(self) -> dict:
        sample = self.sample.values()
        return {"min": self.min, "max": self.max, "mean_abs": torch.tensor(self.abs_sum / max(self.count, 1)),
                "features": self.features, "sample": sample if sample.numel() else torch.zeros(1)}


def input_statistics(model: nn.Module, names: list[str], data, max_batches: int = 8) -> dict[str, dict]:
    """{layer: {"min", "max", "mean_abs", "features", "sample"}} of each named layer's input over calibration data."""
    observers = {n: _InputStats() for n in names}
    observe_inputs(model, observers, data or [], max_batches=max_batches)
    return {n: o.as_dict() for n, o in observers.items()}


@dataclass(frozen=True, kw_only=True)
class QATMethod(Method):
    """Base of the QAT methods: which layers, bit-widths, granularity; subclasses choose quantizers.

    Args:
        weight_bits: weight bit-width (2..16), symmetric signed.
        act_bits: bit-width of every targeted layer's input (2..16); None: weights only.
        granularity: weight scales per "tensor" or per output "channel".
        layer_bits: per-layer bit-width for weights and inputs by layer pattern, e.g. keep the first
            and last layer at 8 bits as LSQ and PACT do: {"conv1": 8, "fc2": 8}.
    """

    weight_bits: int = 4
    act_bits: int | None = 4
    granularity: str = "channel"
    layer_bits: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_quant_fields(self.weight_bits, self.act_bits, self.granularity, 128, self.layer_bits)
        check_choice("granularity", self.granularity, ("tensor", "channel"))

    @property
    def needs(self) -> frozenset[str]:  # type: ignore[override]
        return frozenset({"data"}) if self.act_bits is not None else frozenset()

    def weight_quantizer(self, w: torch.Tensor, bits: int, granularity: Granularity) -> WeightTransform:
        raise NotImplementedError

    def act_quantizer(self, bits: int, stats: dict) -> ActQuantizer:
        raise NotImplementedError

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        layers = quantizable_layers(self, model, activations=self.act_bits is not None)
        weight_bits = per_layer(self.layer_bits, layers, self.weight_bits, "layer_bits")
        act_bits = per_layer(self.layer_bits, layers, self.act_bits, "layer_bits")
        granularity = granularity_from_name(self.granularity)
        act_layers = [n for n, m in layers.items() if self.act_bits is not None and not isinstance(m, LOOKUP_LAYERS)]
        stats = input_statistics(model, act_layers, ctx.data) if act_layers else {}
        for name, layer in layers.items():
            attach(layer, self.weight_quantizer(layer.weight.detach(), weight_bits[name], granularity), layer_name=name)
            if name in stats:
                attach_input_quantizer(layer, self.act_quantizer(act_bits[name], stats[name]), layer_name=name)
                if getattr(layer, "bias", None) is not None:
                    attach(layer, TiedBiasQuant(layer), "bias", layer_name=name)
        ctx.record(self, layers=list(layers), weight_bits=weight_bits,
                   act_bits={n: act_bits[n] for n in act_layers} or None)
        return model


@register("ste")
@dataclass(frozen=True, kw_only=True)
class STEQuant(QATMethod):
    """Plain QAT with the straight-through estimator: LinearQuant's grids (min-max symmetric weights,
    affine uint activations calibrated with min-max), kept fixed while the float weights fine-tune
    through the STE (Bengio et al. 2013; Jacob et al. 2018). Nothing about the grid is learned: the
    baseline that PACT and LSQ improve on.
    Example:
        >>> import nncompress as nc, torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(8, 4))
        >>> _ = nc.apply_(net, STEQuant(weight_bits=4, act_bits=4), data=[torch.randn(16, 8)])
        >>> type(net[0].input_quantizer).__name__, net[0].parametrizations.weight[0].spec.bits
        ('StaticQuantizer', 4)
    """

    def weight_quantizer(self, w: torch.Tensor, bits: int, granularity: Granularity) -> WeightTransform:
        spec = IntSpec(bits=bits, signed=True, symmetric=True)
        return FakeQuant.fit(w, spec, granularity, weight_range(w, spec, granularity, "minmax"))

    def act_quantizer(self, bits: int, stats: dict) -> ActQuantizer:
        spec = IntSpec(bits=bits, signed=False, symmetric=False)
        scale, zero_point = choose_qparams(torch.tensor(stats["min"]), torch.tensor(stats["max"]), spec)
        return StaticQuantizer(spec, scale, zero_point)
