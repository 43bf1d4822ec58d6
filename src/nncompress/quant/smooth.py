"""SmoothQuant (Xiao et al., ICML 2023): migrate activation outliers into the weights.

The LLM-quantization lecture shows why LLM-style models are hard to quantize: a few activation channels are 20-30x
larger than the rest, so one per-tensor activation scale wastes almost all levels on them. For a
Linear y = x W^T, pick per-input-channel factors s_j = max|x_j|^alpha / max|W_:,j|^(1 - alpha) and
compute y = (x / s) (W diag(s))^T: the same function, with flatter activations and slightly
rougher weights. The division by s is kept in the layer's activation quantizer (`smooth` buffer);
a deployment folds it into the preceding LayerNorm.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..analysis.calibrate import observe_inputs
from ..analysis.observers import MinMaxObserver
from ..config import Context, Method, Select
from ..parametrize import original
from ..registry import register
from ..validate import check_fraction, check_int_range
from .activation import StaticQuantizer, attach_input_quantizer
from .granularity import PerChannel
from .primitives import IntSpec, choose_qparams
from .ptq import quantizable_layers, quantize_bias_, quantize_weight_


def smoothing_factors(act_absmax: torch.Tensor, weight: torch.Tensor, alpha: float) -> torch.Tensor:
    """s_j = max|x_j|^alpha / max|W_:,j|^(1 - alpha), clamped away from 0."""
    w_absmax = weight.detach().abs().amax(0).clamp_min(1e-5)
    return (act_absmax.clamp_min(1e-5) ** alpha / w_absmax ** (1 - alpha)).clamp_min(1e-5)


@register("smoothquant")
@dataclass(frozen=True, kw_only=True)
class SmoothQuant(Method):
    """SmoothQuant + static W8A8 (per-channel weights, per-tensor activations) for Linear layers.

    Args:
        alpha: migration strength in [0, 1] (0.5 in the paper).
        weight_bits, act_bits: bit-widths (2..16).
    """

    needs = frozenset({"data"})
    targets: Select = Select(types=("Linear",))
    alpha: float = 0.5
    weight_bits: int = 8
    act_bits: int = 8

    def __post_init__(self) -> None:
        check_fraction("alpha", self.alpha, allow_one=True)
        check_int_range("weight_bits", self.weight_bits, 2, 16)
        check_int_range("act_bits", self.act_bits, 2, 16)

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        layers = {n: m for n, m in quantizable_layers(self, model, activations=True).items() if isinstance(m, nn.Linear)}
        observers = observe_inputs(model, {n: MinMaxObserver(axis=-1) for n in layers}, ctx.data or [])
        spec = IntSpec(bits=self.act_bits, signed=False, symmetric=False)
        for name, layer in layers.items():
            lo, hi = observers[name].range()
            s = smoothing_factors(torch.maximum(lo.abs(), hi.abs()), layer.weight, self.alpha)
            with torch.no_grad():
                original(layer).mul_(s)
            quantize_weight_(layer, self.weight_bits, PerChannel(0), layer_name=name)
            scale, zero_point = choose_qparams((lo / s).min(), (hi / s).max(), spec)  # range of x / s
            quantizer = StaticQuantizer(spec, scale, zero_point)
            quantizer.smooth = s
            attach_input_quantizer(layer, quantizer, layer_name=name)
            quantize_bias_(layer, layer_name=name)
        ctx.record(self, layers=list(layers))
        return model
