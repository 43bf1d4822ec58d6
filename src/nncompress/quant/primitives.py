"""Linear quantization as pure tensor functions (lecture "Linear quantization" in Han, EfficientML.ai Lecture 05
"Quantization Part I", MIT; affine vs scale quantization in "Quantizing neural networks", Efficient Deep
Learning session 2; Jacob et al., CVPR 2018).

r = S (q - Z): the real value r, the integer code q, the scale S and the zero point Z.
- affine:    S = (r_max - r_min) / (q_max - q_min),  Z = round(q_min - r_min / S)
- symmetric: Z = 0, restricted range S = |r|_max / (2^(N-1) - 1), q in [-(2^(N-1) - 1), 2^(N-1) - 1];
             full range S = |r|_max / 2^(N-1), q in [-2^(N-1), 2^(N-1) - 1] (issue 5 convention)
- quantize:  q = clamp(round(r / S) + Z, q_min, q_max);  dequantize: r_hat = S (q - Z)
The range is widened to include 0 so that 0 is exact (zero padding, pruned weights); a zero-width
range gets S = 1 instead of dividing by zero; NaN / inf inputs are rejected with a clear error.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..numerics import int_range
from ..validate import UserError

TINY = torch.finfo(torch.float32).tiny


@dataclass(frozen=True)
class IntSpec:
    """Integer target: bit-width, signedness, symmetric or affine, restricted range."""

    bits: int = 8
    signed: bool = True
    symmetric: bool = True
    restricted: bool = True

    @property
    def q_range(self) -> tuple[int, int]:
        q_min, q_max = int_range(self.bits, self.signed)
        if self.symmetric and self.signed and self.restricted:
            q_min += 1
        return q_min, q_max


def check_finite(x: torch.Tensor, what: str = "tensor") -> None:
    if not torch.isfinite(x).all():
        bad = x[~torch.isfinite(x)].flatten()[:3].tolist()
        raise UserError(f"{what} contains non-finite values {bad}: quantization needs finite inputs")


def choose_qparams(r_min: torch.Tensor, r_max: torch.Tensor, spec: IntSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Scale and zero point (float32, int32 values) mapping [r_min, r_max] onto the spec's codes."""
    check_finite(r_min, "r_min")
    check_finite(r_max, "r_max")
    return qparams_of_finite_range(r_min, r_max, spec)


def qparams_of_finite_range(r_min: torch.Tensor, r_max: torch.Tensor,
                            spec: IntSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """`choose_qparams` for a range already known to be finite (hot paths check it once, cheaply)."""
    r_min = torch.minimum(torch.as_tensor(r_min, dtype=torch.float32), torch.zeros(()))
    r_max = torch.maximum(torch.as_tensor(r_max, dtype=torch.float32), torch.zeros(()))
    q_min, q_max = spec.q_range
    if spec.symmetric:
        bound = torch.maximum(r_max, -r_min)
        denom = q_max if spec.restricted or not spec.signed else -q_min
        scale = bound / denom
        zero_point = torch.zeros_like(scale)
    else:
        scale = (r_max - r_min) / (q_max - q_min)
        zero_point = torch.round(q_min - r_min / torch.where(scale > 0, scale, torch.ones_like(scale)))
    scale = torch.where(scale > TINY, scale, torch.ones_like(scale))  # all-zero range: any S works
    return scale.float(), torch.clamp(zero_point, q_min, q_max).float()


def quantize(r: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, q_min: int, q_max: int) -> torch.Tensor:
    """q = clamp(round(r / S) + Z, q_min, q_max), as float32 holding integers."""
    return torch.clamp(torch.round(r / scale) + zero_point, q_min, q_max)


def dequantize(q: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor) -> torch.Tensor:
    """r_hat = S (q - Z)."""
    return (q - zero_point) * scale


def fake_quantize(r: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, q_min: int, q_max: int) -> torch.Tensor:
    """Quantize then dequantize, with the straight-through estimator: the gradient is 1 where r
    falls inside the representable range [S(q_min - Z), S(q_max - Z)] and 0 where it is clipped."""
    lo, hi = (q_min - zero_point) * scale, (q_max - zero_point) * scale
    clipped = torch.clamp(r, lo, hi)
    out = dequantize(quantize(r, scale, zero_point, q_min, q_max), scale, zero_point)
    return clipped + (out - clipped).detach()


def int_dtype(bits: int, signed: bool) -> torch.dtype:
    """The smallest torch integer dtype that holds the codes."""
    if bits <= 8:
        return torch.int8 if signed else torch.uint8
    return torch.int16 if bits <= 16 and signed else torch.int32


class _RoundSTE(torch.autograd.Function):
    """round(x) forward (exactly), identity backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return grad


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """round(x) whose gradient is the identity (the straight-through estimator, Bengio et al. 2013).

    Unlike `x + (round(x) - x).detach()` the forward value is exactly round(x), and a learned step
    size s in round_ste(v / s) gets LSQ's gradient through the rounding (Esser et al. 2020):
        >>> s = torch.tensor(0.5, requires_grad=True)
        >>> round_ste(torch.tensor(1.3) / s).backward()
        >>> round(float(s.grad), 2)  # d(v/s)/ds = -v/s^2
        -5.2
    """
    return _RoundSTE.apply(x)
