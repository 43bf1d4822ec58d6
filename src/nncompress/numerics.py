"""Number formats, emulated exactly in float32 tensors ("Numeric data types" and "INT4 and FP4" in Han,
EfficientML.ai Lecture 05 "Quantization Part I", MIT; FP8 in Yoo, "Compressing Neural Networks: Pruning and
Quantization", SNU 2023, after Micikevicius et al. 2022, "FP8 Formats for Deep Learning").

- Integers: signed two's complement of N bits covers [-2^(N-1), 2^(N-1) - 1]; unsigned [0, 2^N - 1].
- Fixed point: an N-bit integer with `frac_bits` fractional bits, value = q * 2^-frac_bits.
- Floating point (sign, `exp_bits` exponent, `man_bits` mantissa, bias 2^(exp_bits-1) - 1):
  normal = (1 + m / 2^man_bits) * 2^(e - bias), subnormal (e = 0) = (m / 2^man_bits) * 2^(1 - bias).
  `special` says which codes are not numbers:
  - "ieee": the top exponent holds inf / NaN (fp32, fp16, bf16, FP8 E5M2, largest 57344);
  - "nan": only S.1111.111 is NaN, no infinities (FP8 E4M3 "fn", largest S.1111.110 = 448);
  - "none": every code is a number, no inf, no NaN (the lecture's FP4 formats): E2M1 = {0, 0.5, 1,
    1.5, 2, 3, 4, 6}, E1M2 = {0, 0.5, ..., 3.5}, E3M0 = {0, 0.25, 0.5, 1, 2, 4, 8, 16} (max
    (1 + 0) x 2^(7 - 3) = 16; with no mantissa bit the e = 0 codes are only +-0, so no subnormals).
    OCP MX v1.0 defines FP4 E2M1 the same way (max 6, subnormal 0.5); it has no E3M0 element
    format (its E8M0 is a scale type, without zero), so E3M0 follows the lecture.
Rounding is round-to-nearest, ties to the even code (IEEE 754 RNE; torch.round rounds half to even):
for E3M0, whose codes have no mantissa bit, "even" is the exponent's last bit.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .validate import UserError, check_int_range, unknown_name_error


def int_range(bits: int, signed: bool = True) -> tuple[int, int]:
    """(q_min, q_max) of an N-bit integer: signed [-2^(N-1), 2^(N-1)-1], unsigned [0, 2^N - 1]."""
    check_int_range("bits", bits, 1, 32)
    return (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)


def quantize_fixed_point(x: torch.Tensor, bits: int, frac_bits: int, signed: bool = True) -> torch.Tensor:
    """Round `x` to the nearest N-bit fixed-point value with `frac_bits` fractional bits, saturating."""
    q_min, q_max = int_range(bits, signed)
    step = 2.0 ** -frac_bits
    return torch.clamp(torch.round(x / step), q_min, q_max) * step


SPECIALS = ("ieee", "nan", "none")


@dataclass(frozen=True)
class FloatFormat:
    """A binary floating-point format; `special` ("ieee", "nan" or "none") says which codes are
    inf / NaN (see the module docstring)."""

    name: str
    exp_bits: int
    man_bits: int
    special: str = "ieee"

    @property
    def bias(self) -> int:
        return (1 << (self.exp_bits - 1)) - 1

    @property
    def min_normal(self) -> float:
        return 2.0 ** (1 - self.bias)

    @property
    def min_subnormal(self) -> float:
        """The smallest non-zero value: 2^(1 - bias - man_bits) (the smallest normal if man_bits = 0)."""
        return 2.0 ** (1 - self.bias - self.man_bits)

    @property
    def max_subnormal(self) -> float:
        return (1 - 2.0**-self.man_bits) * self.min_normal

    @property
    def max_value(self) -> float:
        top_exp = (1 << self.exp_bits) - 1 - (1 if self.special == "ieee" else 0)
        top_man = (1 << self.man_bits) - 1 - (1 if self.special == "nan" else 0)  # E4M3fn: S.1111.111 is NaN
        return (1 + top_man / (1 << self.man_bits)) * 2.0 ** (top_exp - self.bias)

    @property
    def bits(self) -> int:
        return 1 + self.exp_bits + self.man_bits


FP32 = FloatFormat("fp32", 8, 23)
FP16 = FloatFormat("fp16", 5, 10)
BF16 = FloatFormat("bf16", 8, 7)
FP8_E4M3 = FloatFormat("fp8_e4m3", 4, 3, special="nan")
FP8_E5M2 = FloatFormat("fp8_e5m2", 5, 2)
FP4_E2M1 = FloatFormat("fp4_e2m1", 2, 1, special="none")
FP4_E1M2 = FloatFormat("fp4_e1m2", 1, 2, special="none")
FP4_E3M0 = FloatFormat("fp4_e3m0", 3, 0, special="none")
# Formats torch stores natively: its casts round to nearest, ties to even, with subnormals, exactly
# as `quantize_float_reference` does (tests compare the two on every code and every midpoint). Keyed
# by the format itself, so a user-made format of the same name but other fields takes the formula.
_NATIVE_DTYPES = {FP16: torch.float16, BF16: torch.bfloat16, FP8_E4M3: torch.float8_e4m3fn,
                  FP8_E5M2: torch.float8_e5m2}
FLOAT_FORMATS = {f.name: f for f in (FP32, FP16, BF16, FP8_E4M3, FP8_E5M2, FP4_E2M1, FP4_E1M2, FP4_E3M0)}


def float_format(name: str) -> FloatFormat:
    """The format called `name` (fp32, fp16, bf16, fp8_e4m3, fp8_e5m2, fp4_e2m1, fp4_e1m2, fp4_e3m0)."""
    if name not in FLOAT_FORMATS:
        raise unknown_name_error("float format", name, FLOAT_FORMATS)
    return FLOAT_FORMATS[name]


def quantize_float(x: torch.Tensor, fmt: FloatFormat, saturate: bool = True) -> torch.Tensor:
    """Round float32 `x` to the nearest value of `fmt` (ties to the even code), with subnormals.

    The result of `quantize_float_reference`, bit for bit; saturating fp16 / bf16 / FP8 rounding
    goes through torch's native dtype (clamp to +-max, cast, cast back), about 10x faster. Like the
    reference (round has no gradient) it is not differentiable: train through `fake_float`.
    """
    native = _NATIVE_DTYPES.get(fmt)
    if native is not None and saturate and x.device.type == "cpu":
        return torch.clamp(x.detach().float(), -fmt.max_value, fmt.max_value).to(native).float()
    return quantize_float_reference(x, fmt, saturate)


def quantize_float_reference(x: torch.Tensor, fmt: FloatFormat, saturate: bool = True) -> torch.Tensor:
    """Round float32 `x` to `fmt` by the formula, for any (exp_bits, man_bits) format.

    q = round(x / step) * step with step = 2^(max(floor(log2|x|), 1 - bias) - man_bits).
    Values beyond the largest finite value saturate to +-max (`saturate=True`, and always for formats
    without special values) or become inf (NaN for E4M3). NaN stays NaN.
    """
    x = x.float()
    mag = x.abs()
    exponent = torch.floor(torch.log2(torch.where(mag > 0, mag, torch.ones_like(mag))))
    exponent = torch.clamp(exponent, min=1 - fmt.bias)  # subnormals share the smallest step
    step = torch.exp2(exponent - fmt.man_bits)
    steps = torch.round(x / step)
    if fmt.man_bits == 0:  # a tie 1.5 x 2^e goes to the even code, i.e. the even biased exponent
        tie_down = ((x / step).abs() == 1.5) & ((exponent + fmt.bias) % 2 == 0)
        steps = torch.where(tie_down, torch.sign(x), steps)
    out = steps * step
    too_big = (out.abs() > fmt.max_value) | torch.isinf(x)
    if saturate or fmt.special == "none":
        out = torch.where(too_big, torch.sign(x) * fmt.max_value, out)
    else:
        overflow = torch.sign(x) * math.inf if fmt.special == "ieee" else torch.full_like(x, math.nan)
        out = torch.where(too_big, overflow, out)
    return torch.where(torch.isnan(x), x, out)


def float_to_bits(x: torch.Tensor, fmt: FloatFormat) -> torch.Tensor:
    """The bit codes (int32, sign | exponent | mantissa) of values already in `fmt` (finite, e.g.
    from `quantize_float`): e = floor(log2|x|) + bias and m = (|x| / 2^(e - bias) - 1) 2^man_bits for
    normals; e = 0 and m = |x| / min_subnormal below min_normal. -0.0 keeps its sign bit."""
    x = x.float()
    mag = x.abs()
    normal = mag >= fmt.min_normal
    significand, exponent = torch.frexp(torch.where(normal, mag, torch.ones_like(mag)))  # mag = sig * 2^exp
    biased = torch.where(normal, exponent - 1 + fmt.bias, torch.zeros_like(exponent)).long()
    normal_man = (significand.double() * 2 - 1) * (1 << fmt.man_bits)
    man = torch.where(normal, normal_man, mag.double() / fmt.min_subnormal).round().long()
    sign = torch.signbit(x).long()
    return (sign << (fmt.exp_bits + fmt.man_bits) | biased << fmt.man_bits | man).int()


def bits_to_float(codes: torch.Tensor, fmt: FloatFormat) -> torch.Tensor:
    """Float32 values of bit codes (any integer dtype; only the low `fmt.bits` bits are read), the
    inverse of `float_to_bits` for finite codes: (-1)^s (1 + m / 2^M) 2^(e - bias), or
    (-1)^s m 2^(1 - bias - M) when e = 0."""
    codes = codes.long() & ((1 << fmt.bits) - 1)
    sign = (codes >> (fmt.exp_bits + fmt.man_bits)) & 1
    biased = (codes >> fmt.man_bits) & ((1 << fmt.exp_bits) - 1)
    man = (codes & ((1 << fmt.man_bits) - 1)).double()
    normal = (1 + man / (1 << fmt.man_bits)) * torch.exp2((biased - fmt.bias).double())
    mag = torch.where(biased > 0, normal, man * fmt.min_subnormal).float()
    return torch.where(sign.bool(), -mag, mag)


def float_grid(fmt: FloatFormat) -> torch.Tensor:
    """Every finite non-negative value of a format of at most 16 bits, ascending (codes 0, 1, ...)."""
    if fmt.bits > 16:
        raise UserError(f"float_grid: {fmt.name} has {fmt.bits} bits; list grids of formats <= 16 bits")
    values = bits_to_float(torch.arange(1 << (fmt.bits - 1)), fmt)
    return values[values <= fmt.max_value]


def decompose_float32(value: float) -> tuple[int, int, float]:
    """(sign, unbiased exponent, significand in [1, 2)) of a normal float32: 365 -> (0, 8, 1.42578125)."""
    if value == 0 or not math.isfinite(value):
        raise UserError(f"value={value!r} must be a finite non-zero number")
    mantissa, exponent = math.frexp(abs(value))  # abs = mantissa * 2^exponent, mantissa in [0.5, 1)
    return (1 if value < 0 else 0), exponent - 1, mantissa * 2
