"""The integer steps the engine runs, one per traced node (Jacob et al., CVPR 2018; TFLite's
reference kernels). Every step takes and returns int64 tensors holding int32 / 8-bit values.

- `QuantizeInput`: the float -> codes boundary, exactly the first layer's StaticQuantizer rounding.
- `LayerStep`: [requant the input onto the layer's grid] -> integer Linear / Conv -> [requant onto
  the next grid, ReLU fused]. Without a next grid (logits), or when the output is a skip
  connection (it reaches a residual add), the int32 accumulator is passed on as it is.
- `Clamp`: ReLU on codes, clamp(q, min=Z) (the code of the real 0); on an accumulator Z = 0.
- `AvgPool`: integer window sums, then a rounding division by the window size (ties to even,
  like torch.round in the simulation and ONNX Runtime's QLinearAveragePool).
- `Apply`: max pooling, flatten and reshapes run as they are on the codes (a monotone code map,
  clamping included, commutes with them).
- `Add`: residual add of two quantized tensors: both are rescaled onto the output grid with
  fixed-point multipliers M_i = S_i / S_Y, keeping `ADD_FRACTION_BITS` fraction bits, summed in
  int32 and rounded once: q_Y = Z_Y + RDBPOT(M_a (q_a - Z_a) + M_b (q_b - Z_b), 16) (TFLite's add
  keeps 20 bits on 8-bit inputs; an operand here may be a 24-bit accumulator, so 16). When the sum
  reaches its layer only through an average pool, it stays wide: int32 on the grid S_Y 2^-16, Z = 0
  (pooled, then requantized by that layer), so the pool's wider input range is not clamped; and it
  stays wide the same way when it feeds the next residual add (a skip connection).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .layers import IntegerLayer, Requant
from .qvalue import Grid, QInfo
from .requant import (INT32_MAX, INT32_MIN, multiply_by_quantized_multiplier, quantize_multiplier, rounding_divide,
                      rounding_divide_by_pot, saturate_int32)

ADD_FRACTION_BITS = 16


class Step:
    """One node's integer computation; `info` says what its output codes mean (None: not a tensor)."""

    info: QInfo | None = None

    def run(self, *args: Any, **kwargs: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass
class QuantizeInput(Step):
    grid: Grid
    info: QInfo | None = None

    def run(self, x: torch.Tensor) -> torch.Tensor:
        return self.grid.quantize(x)


@dataclass
class LayerStep(Step):
    layer: IntegerLayer
    pre: Requant | None
    post: Requant | None
    info: QInfo | None = None

    def trace(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(input codes on the layer's grid, int32 accumulator, output) for testing."""
        codes = self.pre(x) if self.pre is not None else x
        acc = self.layer.accumulate(codes)
        return codes, acc, self.post(acc) if self.post is not None else acc

    def run(self, x: torch.Tensor) -> torch.Tensor:
        return self.trace(x)[2]


@dataclass
class Clamp(Step):
    lo: int
    info: QInfo | None = None

    def run(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(x, min=self.lo)


@dataclass
class Passthrough(Step):
    """Identity, eval-mode dropout, or a ReLU already fused into the producing requantization."""

    info: QInfo | None = None

    def run(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return x


@dataclass
class Apply(Step):
    """Run the node's own module / function / method on the integer values (max pool, reshapes)."""

    fn: Callable[..., Any]
    info: QInfo | None = None

    def run(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)


@dataclass
class AvgPool(Step):
    """Average pooling without padding: rounding_divide(window sum, kh * kw)."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    in_size: tuple[int, int]
    info: QInfo | None = None

    @property
    def count(self) -> int:
        return self.kernel[0] * self.kernel[1]

    def run(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self.in_size:
            raise ValueError(f"average pool planned for {self.in_size} inputs, got {tuple(x.shape[-2:])}")
        return self.run_sums(F.avg_pool2d(x, self.kernel, self.stride, divisor_override=1))

    def run_sums(self, sums: torch.Tensor) -> torch.Tensor:
        """Window sums -> averages, rounded half to even."""
        return rounding_divide(sums, self.count)


@dataclass
class Add(Step):
    """q_Y = clamp(Z_Y + RDBPOT(M_a (q_a - Z_a) + M_b (q_b - Z_b), F), lo, hi), M_i = S_i 2^F / S_Y."""

    a: tuple[torch.Tensor, torch.Tensor, int]  # (M0, shift, Z) of each operand
    b: tuple[torch.Tensor, torch.Tensor, int]
    zero_point: int
    lo: int
    hi: int
    shift_out: int = ADD_FRACTION_BITS  # 0 for a wide output
    info: QInfo | None = None

    @classmethod
    def build(cls, a: QInfo, b: QInfo, grid: Grid, relu: bool, wide: bool = False) -> Add:
        def operand(info: QInfo) -> tuple[torch.Tensor, torch.Tensor, int]:
            m0, shift = quantize_multiplier(info.scale * 2.0**ADD_FRACTION_BITS / float(grid.scale))
            return m0, shift, info.zero_point
        if wide:
            info = QInfo("acc", grid.scale.double().reshape(()) * 2.0**-ADD_FRACTION_BITS)
            return cls(operand(a), operand(b), 0, 0 if relu else INT32_MIN, INT32_MAX, 0, info)
        lo = grid.zero_point if relu else grid.q_min
        return cls(operand(a), operand(b), grid.zero_point, lo, grid.q_max, ADD_FRACTION_BITS, grid.info())

    def run(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        scaled = [multiply_by_quantized_multiplier(q - z, m0, shift)
                  for q, (m0, shift, z) in ((a, self.a), (b, self.b))]
        total = saturate_int32(scaled[0] + scaled[1])
        return torch.clamp(rounding_divide_by_pot(total, self.shift_out) + self.zero_point, self.lo, self.hi)


@dataclass
class Output(Step):
    """The graph output: the engine dequantizes each value with its QInfo."""

    info: QInfo | None = None

    def run(self, *args: Any, **kwargs: Any) -> Any:  # pragma: no cover - handled by the engine
        raise NotImplementedError
