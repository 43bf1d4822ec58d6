"""What an integer tensor of the engine means: r = S (q - Z) (lecture "Linear quantization").

- `Grid`: a per-tensor activation grid (scale, zero point, code range) read from a layer's
  `StaticQuantizer`: the codes a quantized layer consumes.
- `QInfo`: the meaning of any engine value: "codes" on a Grid, or "acc", a wide int32 accumulator
  with Z = 0 and one scale per output channel (S_X S_W[c] after an integer matrix multiply).
  Scales are float64 tensors that broadcast against the value (batch dimension of size 1).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..quant.activation import input_quantizer, on_fixed_grid
from ..quant.primitives import quantize
from ..validate import UserError


class UnsupportedModelError(UserError):
    """The integer engine cannot run this model as it is (the message names the node or layer)."""


@dataclass(frozen=True)
class Grid:
    """Codes q in [q_min, q_max] of the real values scale * (q - zero_point), per tensor."""

    scale: torch.Tensor  # the quantizer's own float32 scalar (input quantization uses it as is)
    zero_point: int
    q_min: int
    q_max: int

    @classmethod
    def of_layer(cls, layer: torch.nn.Module, where: str) -> Grid:
        """The grid of `layer`'s static input quantizer (an UnsupportedModelError if it has none)."""
        quantizer = input_quantizer(layer)
        if not on_fixed_grid(quantizer):  # a StaticQuantizer, or a learned grid (PACT, LSQ)
            found = type(quantizer).__name__ if quantizer is not None else "no input quantizer"
            raise UnsupportedModelError(
                f"{where}: the integer engine needs a static input quantizer (found {found}); quantize "
                "with nc.LinearQuant(act_bits=8) and calibration data")
        if quantizer.smooth is not None:
            raise UnsupportedModelError(f"{where}: SmoothQuant input divisors are not supported by the integer engine")
        if quantizer.scale.numel() != 1 or quantizer.zero_point.numel() != 1:
            raise UnsupportedModelError(f"{where}: the input quantizer must be per tensor")
        q_min, q_max = quantizer.spec.q_range
        return cls(quantizer.scale.detach().reshape(()).float(), int(quantizer.zero_point.item()), q_min, q_max)

    def same(self, other: Grid) -> bool:
        return (float(self.scale) == float(other.scale) and self.zero_point == other.zero_point
                and (self.q_min, self.q_max) == (other.q_min, other.q_max))

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        """Float -> codes exactly as the StaticQuantizer rounds: clamp(round(x / S) + Z) in float32."""
        zero_point = torch.tensor(float(self.zero_point))
        return quantize(x.float(), self.scale, zero_point, self.q_min, self.q_max).to(torch.int64)

    def info(self) -> QInfo:
        return QInfo("codes", self.scale.double(), self.zero_point, self)

    def __repr__(self) -> str:
        return f"Grid(S={float(self.scale):.6g}, Z={self.zero_point}, [{self.q_min}, {self.q_max}])"


@dataclass(frozen=True)
class QInfo:
    """An engine value's meaning: r = scale * (q - zero_point). kind: "codes" (on `grid`) or "acc"."""

    kind: str
    scale: torch.Tensor  # float64, broadcastable to the value
    zero_point: int = 0
    grid: Grid | None = None

    @property
    def per_tensor(self) -> bool:
        return self.scale.numel() == 1 or bool((self.scale == self.scale.flatten()[0]).all())

    def dequantize(self, q: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The real values scale * (q - Z), computed in float64 and rounded once to `dtype`."""
        return (self.scale * (q - self.zero_point).double()).to(dtype)

    def recover(self, r: torch.Tensor) -> tuple[torch.Tensor, float]:
        """The integers a float value stands for, round(r / scale) + Z, and the largest distance
        of r / scale from an integer (0 for values that lie on the grid exactly)."""
        exact = r.double() / self.scale
        q = torch.round(exact)
        error = float((exact - q).abs().max()) if q.numel() else 0.0
        return q.to(torch.int64) + self.zero_point, error

    def with_scale(self, scale: torch.Tensor) -> QInfo:
        return QInfo(self.kind, scale, self.zero_point, self.grid)
