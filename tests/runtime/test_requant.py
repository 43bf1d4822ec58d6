"""Fixed-point requantization (Jacob et al., CVPR 2018, sec. 2.2; lecture "Linear quantization")."""
from fractions import Fraction

import pytest
import torch

from nncompress.quant.primitives import quantize
from nncompress.runtime.requant import (INT32_MAX, INT32_MIN, multiply_by_quantized_multiplier, quantize_multiplier,
                                        requantize, rounding_divide, rounding_divide_by_pot,
                                        saturating_rounding_doubling_high_mul)

# The lecture's 4x4 weight matrix (seed 001), 2-bit affine: S_W = 3.2 / 3 (the slide's 1.07), Z_W = -1.
W = torch.tensor([[2.09, -0.98, 1.48, 0.09], [0.05, -0.14, -1.08, 2.12],
                  [-0.91, 1.92, 0.0, -1.03], [1.87, 0.0, 1.53, 1.49]])


def exact_round(value: Fraction) -> int:
    """round half away from zero, exactly."""
    magnitude = int(abs(value) + Fraction(1, 2))
    return magnitude if value >= 0 else -magnitude


def test_multiplier_is_m0_in_half_one_times_a_power_of_two():
    """M = 2^-n M0 with M0 in [0.5, 1) (lecture), held as a Q31 int32 >= 2^30: 30+ bits of precision."""
    assert [int(v) for v in quantize_multiplier(0.5)] == [2**30, 0]
    assert [int(v) for v in quantize_multiplier(0.75)] == [3 * 2**29, 0]
    assert [int(v) for v in quantize_multiplier(0.2)] == [1717986918, 2]  # 0.8 * 2^31, n = 2
    multipliers = torch.logspace(-9, 3, 2001, dtype=torch.float64)
    m0, shift = quantize_multiplier(multipliers)
    assert bool(((m0 >= 2**30) & (m0 < 2**31)).all())
    rebuilt = m0.double() * torch.pow(2.0, -31 - shift.double())
    assert float(((rebuilt - multipliers).abs() / multipliers).max()) <= 2.0**-31


def test_multiplier_edge_cases():
    # M >= 1 is a left shift: M = 3 = 0.75 * 2^2
    m0, shift = quantize_multiplier(3.0)
    assert (int(m0), int(shift)) == (3 * 2**29, -2)
    x = torch.tensor([0, 1, -7, 1000, 2**28])
    assert multiply_by_quantized_multiplier(x, m0, shift).tolist() == (3 * x).tolist()
    # 2^30 << 2 saturates at 2^31 - 1 before the multiply by 0.75
    assert int(multiply_by_quantized_multiplier(torch.tensor(2**30), m0, shift)) == round(INT32_MAX * 0.75)
    # m * 2^31 rounding up to 2^31 renormalises: M = 1 - 2^-40 is held as 2^30 * 2^-31 * 2^1 = 1
    assert [int(v) for v in quantize_multiplier(1 - 2.0**-40)] == [2**30, -1]
    # tiny M: 2^-31 still representable (n = 30); below 2^-62 the product always rounds to 0 -> (0, 0)
    m0, shift = quantize_multiplier(2.0**-31)
    assert (int(m0), int(shift)) == (2**30, 30)
    assert int(multiply_by_quantized_multiplier(torch.tensor(INT32_MAX), m0, shift)) == 1
    assert [int(v) for v in quantize_multiplier(1e-20)] == [0, 0] == [int(v) for v in quantize_multiplier(0.0)]
    with pytest.raises(ValueError, match="finite and >= 0"):
        quantize_multiplier(-0.5)


def test_gemmlowp_rounding_of_ties_and_negative_values():
    # SaturatingRoundingDoublingHighMul: round(a b / 2^31), ties towards +inf; the one overflow saturates
    half = torch.tensor(2**30)  # 0.5 in Q31
    assert saturating_rounding_doubling_high_mul(torch.tensor([3, -3, 5, -5, -6]), half).tolist() == [2, -1, 3, -2, -3]
    assert int(saturating_rounding_doubling_high_mul(torch.tensor(INT32_MIN), torch.tensor(INT32_MIN))) == INT32_MAX
    # RoundingDivideByPOT: ties away from zero, also for negative accumulators
    assert rounding_divide_by_pot(torch.tensor([4, 5, 6, -4, -5, -6, -7]), 2).tolist() == [1, 1, 2, -1, -1, -2, -2]
    assert rounding_divide_by_pot(torch.tensor([-1, 1, -2, 2]), 1).tolist() == [-1, 1, -1, 1]
    # the combination: acc * 0.25 for negative ties (M0 = 0.5, n = 1)
    quarter = multiply_by_quantized_multiplier(torch.tensor([-2, -6, -10, 2, 6, 10]), 2**30, 1)
    assert quarter.tolist() == [-1, -2, -3, 1, 2, 3]


def test_fixed_point_product_is_within_rounding_of_the_exact_product():
    """gemmlowp rounds twice (at 2^-31 of the product, then at the 2^-n shift), so its result can
    differ from the exactly rounded product when that lies within 2^-(n+1) of a tie: a rate of
    about 2^-n, the '1-LSB cases' of the float simulation."""
    gen = torch.Generator().manual_seed(0)
    acc = torch.randint(-(2**24), 2**24, (20000,), generator=gen)
    for real in (0.0007351, 0.031, 0.4999, 0.75, 1.3):
        m0, shift = quantize_multiplier(real)
        n = int(shift)
        got = multiply_by_quantized_multiplier(acc, m0, shift)
        exact = acc.double() * int(m0) * 2.0 ** (-31 - n)
        assert float((got - exact).abs().max()) <= 0.5 + 2.0 ** -(max(n, 0) + 1) + 1e-9
        if n > 0:
            nearest = torch.sign(exact) * torch.floor(exact.abs() + 0.5)
            assert float((got - nearest).ne(0).double().mean()) <= 2.0**-n


def test_lecture_matmul_with_zero_points_and_fixed_point_requantization():
    """q_Y = S_W S_X / S_Y (q_W q_X - Z_W q_X - Z_X q_W + Z_W Z_X) + Z_Y (lecture, Jacob et al. eq. 4-7),
    with the lecture's 2-bit W (S_W = 1.07, Z_W = -1) and the seed-000 int8 activation grid
    (S_X = 97.1 / 255, Z_X = 82: 10.5 -> 110)."""
    s_w, z_w = torch.tensor(3.2 / 3), torch.tensor(-1.0)
    q_w = quantize(W, s_w, z_w, -2, 1).to(torch.int64)
    assert q_w.tolist() == [[1, -2, 0, -1], [-1, -1, -2, 1], [-2, 1, -1, -2], [1, -1, 0, 0]]
    s_x, z_x = torch.tensor(97.1 / 255), torch.tensor(82.0)
    x = torch.tensor([[10.5, -31.4], [65.7, 0.0], [-5.2, 20.0], [3.3, 44.4]])
    q_x = quantize(x, s_x, z_x, 0, 255).to(torch.int64)
    assert int(q_x[0, 0]) == 110
    k = q_w.shape[1]
    z_w, z_x = int(z_w), int(z_x)
    acc = q_w @ q_x - z_w * q_x.sum(0, keepdim=True) - z_x * q_w.sum(1, keepdim=True) + k * z_w * z_x
    assert torch.equal(acc, (q_w - z_w) @ (q_x - z_x))
    y = float(s_w) * float(s_x) * acc.double()  # the real product of the dequantized operands
    s_y = (y.max() - y.min()) / 255
    z_y = int(torch.round(-y.min() / s_y))
    m = float(s_w) * float(s_x) / float(s_y)
    m0, shift = quantize_multiplier(m)
    q_y = requantize(acc, m0, shift, z_y, 0, 255)
    exact = [[exact_round(Fraction(a) * int(m0) / 2 ** (31 + int(shift))) + z_y for a in row] for row in acc.tolist()]
    assert q_y.tolist() == exact
    assert torch.equal(q_y, quantize(y, s_y, torch.tensor(float(z_y), dtype=torch.float64), 0, 255).to(torch.int64))


def test_bias_folds_the_zero_point_term():
    """Z_W = 0: S_W S_X (q_W q_X - Z_X q_W + q_b), q_bias = q_b - Z_X sum(q_W) precomputed (lecture)."""
    gen = torch.Generator().manual_seed(1)
    q_w = torch.randint(-127, 128, (6, 9), generator=gen)
    q_x = torch.randint(0, 256, (9, 5), generator=gen)
    q_b = torch.randint(-5000, 5000, (6, 1), generator=gen)
    z_x = 117
    q_bias = q_b - z_x * q_w.sum(1, keepdim=True)
    assert torch.equal(q_w @ q_x + q_bias, q_w @ (q_x - z_x) + q_b)


def test_rounding_divide_rounds_half_to_even():
    assert rounding_divide(torch.tensor([6, 10, 7, -6, -10, -7, 0, 8]), 4).tolist() == [2, 2, 2, -2, -2, -2, 0, 2]
    sums = torch.arange(-1000, 1000)
    assert torch.equal(rounding_divide(sums, 9), torch.round(sums.double() / 9).to(torch.int64))
    assert torch.equal(rounding_divide(sums, 4), torch.round(sums.double() / 4).to(torch.int64))
