"""Number formats, emulated exactly in float32 tensors (seed 001 "Numeric data types"; seed 000 FP8).

- Integers: signed two's complement of N bits covers [-2^(N-1), 2^(N-1) - 1]; unsigned [0, 2^N - 1].
- Fixed point: an N-bit integer with `frac_bits` fractional bits, value = q * 2^-frac_bits.
- Floating point (sign, `exp_bits` exponent, `man_bits` mantissa, bias 2^(exp_bits-1) - 1):
  normal = (1 + m / 2^man_bits) * 2^(e - bias), subnormal (e = 0) = (m / 2^man_bits) * 2^(1 - bias).
  FP8 E4M3 (OCP "fn" variant) has no infinities and keeps S.1111.111 for NaN, so its largest value is
  448; E5M2 follows IEEE (inf and NaN at e = 31), largest 57344.
Rounding is round-to-nearest-even everywhere (torch.round rounds half to even).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .validate import check_int_range


def int_range(bits: int, signed: bool = True) -> tuple[int, int]:
    """(q_min, q_max) of an N-bit integer: signed [-2^(N-1), 2^(N-1)-1], unsigned [0, 2^N - 1]."""
    check_int_range("bits", bits, 1, 32)
    return (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)


def quantize_fixed_point(x: torch.Tensor, bits: int, frac_bits: int, signed: bool = True) -> torch.Tensor:
    """Round `x` to the nearest N-bit fixed-point value with `frac_bits` fractional bits, saturating."""
    q_min, q_max = int_range(bits, signed)
    step = 2.0 ** -frac_bits
    return torch.clamp(torch.round(x / step), q_min, q_max) * step


@dataclass(frozen=True)
class FloatFormat:
    """A binary floating-point format; `ieee_special` reserves the top exponent for inf / NaN."""

    name: str
    exp_bits: int
    man_bits: int
    ieee_special: bool = True

    @property
    def bias(self) -> int:
        return (1 << (self.exp_bits - 1)) - 1

    @property
    def min_normal(self) -> float:
        return 2.0 ** (1 - self.bias)

    @property
    def min_subnormal(self) -> float:
        return 2.0 ** (1 - self.bias - self.man_bits)

    @property
    def max_subnormal(self) -> float:
        return (1 - 2.0**-self.man_bits) * self.min_normal

    @property
    def max_value(self) -> float:
        top_exp = (1 << self.exp_bits) - 1 - (1 if self.ieee_special else 0)
        top_man = (1 << self.man_bits) - 1 - (0 if self.ieee_special else 1)  # E4M3fn: S.1111.111 is NaN
        return (1 + top_man / (1 << self.man_bits)) * 2.0 ** (top_exp - self.bias)

    @property
    def bits(self) -> int:
        return 1 + self.exp_bits + self.man_bits


FP32 = FloatFormat("fp32", 8, 23)
FP16 = FloatFormat("fp16", 5, 10)
BF16 = FloatFormat("bf16", 8, 7)
FP8_E4M3 = FloatFormat("fp8_e4m3", 4, 3, ieee_special=False)
FP8_E5M2 = FloatFormat("fp8_e5m2", 5, 2)
FLOAT_FORMATS = {f.name: f for f in (FP32, FP16, BF16, FP8_E4M3, FP8_E5M2)}


def quantize_float(x: torch.Tensor, fmt: FloatFormat, saturate: bool = True) -> torch.Tensor:
    """Round float32 `x` to the nearest value of `fmt` (ties to even), with subnormals.

    Values beyond the largest finite value saturate to +-max (`saturate=True`) or become inf for
    formats that have it (NaN for E4M3). NaN stays NaN.
    """
    x = x.float()
    mag = x.abs()
    exponent = torch.floor(torch.log2(torch.where(mag > 0, mag, torch.ones_like(mag))))
    exponent = torch.clamp(exponent, min=1 - fmt.bias)  # subnormals share the smallest step
    step = torch.exp2(exponent - fmt.man_bits)
    out = torch.round(x / step) * step
    too_big = out.abs() > fmt.max_value
    if saturate:
        out = torch.where(too_big, torch.sign(x) * fmt.max_value, out)
    else:
        overflow = torch.sign(x) * math.inf if fmt.ieee_special else torch.full_like(x, math.nan)
        out = torch.where(too_big, overflow, out)
    return torch.where(torch.isnan(x), x, out)


def decompose_float32(value: float) -> tuple[int, int, float]:
    """(sign, unbiased exponent, significand in [1, 2)) of a normal float32: 365 -> (0, 8, 1.42578125)."""
    if value == 0 or not math.isfinite(value):
        raise ValueError(f"value={value!r} must be a finite non-zero number")
    mantissa, exponent = math.frexp(abs(value))  # abs = mantissa * 2^exponent, mantissa in [0.5, 1)
    return (1 if value < 0 else 0), exponent - 1, mantissa * 2
