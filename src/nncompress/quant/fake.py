"""Fake quantization (simulated integers in float) for weights and activations.

`FakeQuant` is the weight parametrization: the model computes with S (q - Z) and trains through
the straight-through estimator; `encode` gives the integer codes and qparams, and `decode`
rebuilds exactly what `forward` computes. `QuantInput` is the one activation wrapper: it
fake-quantizes a layer's input (static qparams from calibration, or dynamic per batch / per token)
and, when the layer's weight is quantized too, the bias as int32 with S_b = S_W S_X, Z_b = 0
(seed 001 "Linear quantized fully-connected layer").
"""
from __future__ import annotations

import torch
from torch import nn

from ..parametrize import WeightTransform, find_transform
from .granularity import Granularity, PerChannel, PerGroup, PerTensor
from .primitives import IntSpec, choose_qparams, dequantize, fake_quantize, int_dtype, quantize


def tensor_range(x: torch.Tensor, granularity: Granularity) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-granularity (r_min, r_max), shaped to broadcast against x (grouped view for PerGroup)."""
    if isinstance(granularity, PerGroup):
        g = granularity.group(x)
        return g.amin(-1, keepdim=True), g.amax(-1, keepdim=True)
    dims = granularity.reduce_dims(x)
    return x.amin(dims, keepdim=True), x.amax(dims, keepdim=True)


class FakeQuant(WeightTransform):
    """w -> S (clamp(round(w / S) + Z) - Z) with buffers `scale` and `zero_point`."""

    def __init__(self, spec: IntSpec, granularity: Granularity, scale: torch.Tensor, zero_point: torch.Tensor):
        super().__init__()
        self.spec, self.granularity = spec, granularity
        self.register_buffer("scale", scale.detach().clone().float())
        self.register_buffer("zero_point", zero_point.detach().clone().float())

    @classmethod
    def fit(cls, w: torch.Tensor, spec: IntSpec, granularity: Granularity,
            r_range: tuple[torch.Tensor, torch.Tensor] | None = None) -> FakeQuant:
        """Qparams from `r_range` (default: the min / max of `w` at this granularity)."""
        r_min, r_max = r_range if r_range is not None else tensor_range(w.detach(), granularity)
        return cls(spec, granularity, *choose_qparams(r_min, r_max, spec))

    @property
    def storage_bits(self) -> int:  # type: ignore[override]
        return self.spec.bits

    def _grouped(self, w: torch.Tensor) -> torch.Tensor:
        return self.granularity.group(w) if isinstance(self.granularity, PerGroup) else w

    def _ungrouped(self, g: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return self.granularity.ungroup(g, like) if isinstance(self.granularity, PerGroup) else g

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        q_min, q_max = self.spec.q_range
        return self._ungrouped(fake_quantize(self._grouped(w), self.scale, self.zero_point, q_min, q_max), w)

    def encode(self, w: torch.Tensor) -> dict[str, torch.Tensor]:
        q_min, q_max = self.spec.q_range
        codes = quantize(self._grouped(w.detach()), self.scale, self.zero_point, q_min, q_max)
        codes = self._ungrouped(codes, w).to(int_dtype(self.spec.bits, self.spec.signed))
        return {"codes": codes, "scale": self.scale.clone(), "zero_point": self.zero_point.to(torch.int32)}

    def decode(self, encoded: dict[str, torch.Tensor]) -> torch.Tensor:
        codes = encoded["codes"].float()
        return self._ungrouped(dequantize(self._grouped(codes), encoded["scale"], encoded["zero_point"].float()), codes)

    def extra_repr(self) -> str:
        return f"bits={self.spec.bits}, symmetric={self.spec.symmetric}, granularity={self.granularity}"


class QuantInput(nn.Module):
    """Runs `layer` on a fake-quantized input.

    mode "static": fixed `scale` / `zero_point` (from calibration); "dynamic": qparams from each
    input at run time, per tensor or per token (`per_token=True`: one scale per row of the last
    dimension). `smooth` (SmoothQuant, Xiao et al. 2023) divides the input channels by s before
    quantizing; the caller has multiplied the weight's input channels by the same s.
    """

    def __init__(self, layer: nn.Module, spec: IntSpec, *, scale: torch.Tensor | None = None,
                 zero_point: torch.Tensor | None = None, per_token: bool = False, quantize_bias: bool = True):
        super().__init__()
        self.layer, self.spec, self.per_token, self.quantize_bias = layer, spec, per_token, quantize_bias
        self.register_buffer("scale", None if scale is None else scale.detach().clone().float())
        self.register_buffer("zero_point", None if zero_point is None else zero_point.detach().clone().float())
        self.register_buffer("smooth", None)
        weight_quant = find_transform(layer, FakeQuant)  # kept so the bias stays int32 after squash_
        self.register_buffer("weight_scale", weight_quant.scale.flatten().clone()
                             if weight_quant is not None and quantize_bias else None)

    @property
    def dynamic(self) -> bool:
        return self.scale is None

    def input_qparams(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.dynamic:
            return self.scale, self.zero_point  # type: ignore[return-value]
        granularity = PerChannel(0) if self.per_token else PerTensor()
        rows = x.detach().reshape(-1, x.shape[-1]) if self.per_token else x.detach()
        scale, zero_point = choose_qparams(*tensor_range(rows, granularity), self.spec)
        if self.per_token:
            scale, zero_point = scale.reshape(*x.shape[:-1], 1), zero_point.reshape(*x.shape[:-1], 1)
        return scale, zero_point

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.smooth is not None:  # Linear layers only: channels are the last dimension
            x = x / self.smooth
        scale, zero_point = self.input_qparams(x)
        q_min, q_max = self.spec.q_range
        x = fake_quantize(x, scale, zero_point, q_min, q_max)
        return self._run_layer(x, scale)

    def _run_layer(self, x: torch.Tensor, input_scale: torch.Tensor) -> torch.Tensor:
        """Call the layer itself (so its hooks fire), then move its bias onto the int32 grid:
        x W + b + (round(b / S_b) S_b - b) = x W + b_q."""
        out = self.layer(x)
        correction = self._bias_correction(input_scale)
        if correction is None:
            return out
        return out + (correction if isinstance(self.layer, nn.Linear) else correction.view(-1, *[1] * (out.dim() - 2)))

    def _bias_correction(self, input_scale: torch.Tensor) -> torch.Tensor | None:
        """b_q - b with S_b = S_W S_X, Z_b = 0, int32 range (no gradient: the bias trains by STE)."""
        weight_quant = find_transform(self.layer, FakeQuant)
        weight_scale = weight_quant.scale.flatten() if weight_quant is not None else self.weight_scale
        bias = getattr(self.layer, "bias", None)
        if bias is None or weight_scale is None or not self.quantize_bias or input_scale.numel() != 1:
            return None
        bias_scale = (weight_scale if weight_scale.numel() == bias.numel() else weight_scale[:1]) * input_scale.flatten()
        q_bias = torch.clamp(torch.round(bias / bias_scale), -(2**31), 2**31 - 1) * bias_scale
        return (q_bias - bias).detach()

    def extra_repr(self) -> str:
        kind = "dynamic per-token" if self.dynamic and self.per_token else ("dynamic" if self.dynamic else "static")
        return f"act_bits={self.spec.bits}, {kind}"
