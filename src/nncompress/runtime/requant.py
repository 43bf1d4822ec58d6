"""Fixed-point requantization, as pure integer functions (Jacob et al., CVPR 2018, sec. 2.2;
lecture "Linear quantization: integer-only matrix multiply").

The output of an integer matrix multiply is rescaled from the int32 accumulator onto the output grid:
    q_Y = Z_Y + M * acc,   M = S_W S_X / S_Y,   acc = sum (q_W - Z_W)(q_X - Z_X) + q_b.
The real multiplier M is held as M = M0 * 2^-31 * 2^-n, M0 a Q31 int32 in [2^30, 2^31) (i.e.
M0 * 2^-31 in [0.5, 1), the lecture's "M = 2^-n M0, M0 in [0.5, 1)"), and applied with gemmlowp's
two integer primitives (TFLite's `MultiplyByQuantizedMultiplier`):
    SaturatingRoundingDoublingHighMul(a, b) = round(a * b / 2^31)   (ties towards +inf; saturates
                                                                      only at a = b = -2^31)
    RoundingDivideByPOT(x, n)               = round(x / 2^n)        (ties away from zero)
`n` is the lecture's right shift; n < 0 (a multiplier >= 1) becomes a left shift of the input,
which saturates at the int32 limits. A multiplier below 2^-62 (n > 31) is replaced by 0, as TFLite
does: |acc * M| < 1/2 for every int32 acc, so the result is 0 either way.

Every function takes and returns torch.int64 tensors holding int32 values (exact on any device);
`M0` / `n` may be tensors that broadcast against the input (per-channel multipliers).
"""
from __future__ import annotations

import torch

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
Q31_ONE = 2**31


def saturate_int32(x: torch.Tensor) -> torch.Tensor:
    """Clamp an int64 tensor to the int32 range (a saturating int32 operation)."""
    return torch.clamp(x, INT32_MIN, INT32_MAX)


def quantize_multiplier(real_multiplier: float | torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """M -> (M0, n) with M = M0 * 2^-31 * 2^-n, M0 in [2^30, 2^31) (TFLite's `QuantizeMultiplier`).

    `real_multiplier` (>= 0, float64 for full precision) may be a tensor: one pair per element.
    M = 0 gives (0, 0); M < 2^-62 also gives (0, 0) (the product would round to 0 anyway); M must
    be below 2^31 (n >= -31). M0 = round(m * 2^31) with half-way cases away from zero, where
    M = m * 2^e, m in [0.5, 1) (frexp); m * 2^31 rounding up to 2^31 is renormalised.
        >>> quantize_multiplier(0.75)
        (tensor(1610612736), tensor(0))
        >>> quantize_multiplier(1.0)   # M >= 1: a left shift by 1
        (tensor(1073741824), tensor(-1))
    """
    m = torch.as_tensor(real_multiplier, dtype=torch.float64)
    if not torch.isfinite(m).all() or (m < 0).any():
        raise ValueError(f"real multiplier must be finite and >= 0, got {m.flatten()[:4].tolist()}")
    if (m >= 2.0**31).any():
        raise ValueError(f"real multiplier {float(m.max())} >= 2^31 cannot be held as M0 * 2^-n with n >= -31")
    mantissa, exponent = torch.frexp(m)
    m0 = torch.floor(mantissa * Q31_ONE + 0.5).to(torch.int64)
    carry = m0 == Q31_ONE
    m0 = torch.where(carry, m0 // 2, m0)
    shift = -(exponent.to(torch.int64) + carry.to(torch.int64))
    dead = (m0 == 0) | (shift > 31)
    return torch.where(dead, 0, m0), torch.where(dead, 0, shift)


def saturating_rounding_doubling_high_mul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """gemmlowp's SaturatingRoundingDoublingHighMul: the high 32 bits of 2 a b, rounded.

    Equals round(a * b / 2^31) with ties rounded towards +inf (nudge 2^30 for a b >= 0, 1 - 2^30
    otherwise, then C's truncating division); the one overflow, a = b = -2^31, saturates to 2^31 - 1.
        >>> saturating_rounding_doubling_high_mul(torch.tensor([3, -3]), torch.tensor(2**30))  # +-1.5
        tensor([ 2, -1])
    """
    a, b = torch.broadcast_tensors(a.to(torch.int64), torch.as_tensor(b, dtype=torch.int64))
    overflow = (a == INT32_MIN) & (b == INT32_MIN)
    ab = a * b
    nudge = torch.where(ab >= 0, 2**30, 1 - 2**30)
    high = torch.div(ab + nudge, Q31_ONE, rounding_mode="trunc")
    return torch.where(overflow, INT32_MAX, high)


def rounding_divide_by_pot(x: torch.Tensor, exponent: torch.Tensor | int) -> torch.Tensor:
    """gemmlowp's RoundingDivideByPOT: round(x / 2^exponent), ties away from zero (0 <= exponent <= 63).
        >>> rounding_divide_by_pot(torch.tensor([5, -5, 6, -6, -7]), 2)  # 1.25 -1.25 1.5 -1.5 -1.75
        tensor([ 1, -1,  2, -2, -2])
    """
    x = x.to(torch.int64)
    exponent = torch.as_tensor(exponent, dtype=torch.int64)
    mask = torch.bitwise_left_shift(torch.ones_like(exponent), exponent) - 1
    remainder = torch.bitwise_and(x, mask)
    threshold = torch.bitwise_right_shift(mask, 1) + (x < 0).to(torch.int64)
    return torch.bitwise_right_shift(x, exponent) + (remainder > threshold).to(torch.int64)


def multiply_by_quantized_multiplier(acc: torch.Tensor, m0: torch.Tensor | int,
                                     shift: torch.Tensor | int) -> torch.Tensor:
    """acc * M0 * 2^-31 * 2^-shift in int32 fixed point (TFLite's `MultiplyByQuantizedMultiplier`).

    acc (int32 values) is first shifted left by max(-shift, 0) with saturation, multiplied by M0
    with SaturatingRoundingDoublingHighMul, then divided by 2^max(shift, 0) with
    RoundingDivideByPOT. Lecture / paper check (M = 0.2, acc = 1000):
        >>> m0, n = quantize_multiplier(0.2)
        >>> int(m0), int(n), int(multiply_by_quantized_multiplier(torch.tensor(1000), m0, n))
        (1717986918, 2, 200)
    """
    m0 = torch.as_tensor(m0, dtype=torch.int64)
    shift = torch.as_tensor(shift, dtype=torch.int64)
    left = torch.clamp(-shift, min=0)
    right = torch.clamp(shift, min=0)
    power = torch.bitwise_left_shift(torch.ones_like(left), left)
    shifted = saturate_int32(saturate_int32(acc.to(torch.int64)) * power)
    return rounding_divide_by_pot(saturating_rounding_doubling_high_mul(shifted, m0), right)


def requantize(acc: torch.Tensor, m0: torch.Tensor, shift: torch.Tensor, zero_point: int,
               q_min: int, q_max: int) -> torch.Tensor:
    """q_Y = clamp(Z_Y + M acc, q_min, q_max) with M = M0 2^-31 2^-shift (Jacob et al. eq. 7).

    A ReLU after the layer is fused by passing q_min = Z_Y (the code of the real value 0)."""
    return torch.clamp(multiply_by_quantized_multiplier(acc, m0, shift) + zero_point, q_min, q_max)


def rounding_divide(x: torch.Tensor, divisor: int) -> torch.Tensor:
    """round(x / divisor) for a positive integer divisor, ties to even (an average pool's integer
    sum -> mean). Ties are common here (a 2x2 mean is k + 1/2 for a quarter of the sums), and
    half-to-even is what the float simulation's torch.round and ONNX Runtime's QLinearAveragePool do
    (TFLite's (sum + count / 2) / count rounds them up).
        >>> rounding_divide(torch.tensor([6, 10, 7, -6, -10, -7]), 4)  # 1.5 2.5 1.75 -1.5 -2.5 -1.75
        tensor([ 2,  2,  2, -2, -2, -2])
    """
    if divisor < 1:
        raise ValueError(f"divisor={divisor} must be >= 1")
    x = x.to(torch.int64)
    quotient = torch.div(x, divisor, rounding_mode="floor")
    twice_remainder = 2 * (x - quotient * divisor)
    up = (twice_remainder > divisor) | ((twice_remainder == divisor) & (quotient % 2 == 1))
    return quotient + up.to(torch.int64)
