import math

import pytest
import torch

from nncompress.numerics import (BF16, FP4_E1M2, FP4_E2M1, FP4_E3M0, FP8_E4M3, FP8_E5M2, FP16, bits_to_float,
                                 decompose_float32, float_format, float_grid, float_to_bits, int_range,
                                 quantize_fixed_point, quantize_float, quantize_float_reference)
from nncompress.validate import UserError


def test_fp8_e4m3_limits_from_the_slides():
    assert FP8_E4M3.min_subnormal == 2.0**-9
    assert FP8_E4M3.max_subnormal == 0.875 * 2.0**-6
    assert FP8_E4M3.min_normal == 2.0**-6
    assert FP8_E4M3.max_value == 448.0 and FP8_E5M2.max_value == 57344.0


def test_fp32_decomposition_of_365():
    assert decompose_float32(365.0) == (0, 8, 1.42578125)
    with pytest.raises(ValueError, match="finite non-zero"):
        decompose_float32(0.0)


SPECIALS = torch.tensor([0.0, -0.0, 1.0, 1.0625, 1.1875, 2.0**-10, 2.0**-9, 1.5 * 2.0**-9, 0.875 * 2.0**-6,
                         448.0, 460.0, 65504.0, 65520.0, 57344.0, 3e-8, -2.5, 1e-3])


@pytest.mark.parametrize("fmt,dtype", [(FP16, torch.float16), (BF16, torch.bfloat16),
                                       (FP8_E4M3, torch.float8_e4m3fn), (FP8_E5M2, torch.float8_e5m2)])
def test_emulation_matches_torch_casts_bit_for_bit(fmt, dtype):
    torch.manual_seed(0)
    x = torch.cat([torch.randn(20000) * 10, torch.randn(20000) * 1e-3, torch.randn(2000) * 1e-6, SPECIALS])
    x = x[x.abs() <= fmt.max_value]  # casts differ on overflow policy; tested below
    assert torch.equal(quantize_float_reference(x, fmt), x.to(dtype).float())


@pytest.mark.parametrize("fmt", [FP16, BF16, FP8_E4M3, FP8_E5M2])
def test_fast_native_path_equals_the_formula_on_every_midpoint_and_beyond_max(fmt):
    """quantize_float casts through torch's dtype; the formula is the reference: ties at every
    midpoint between neighbouring finite values, values past max, inf and NaN agree bit for bit."""
    grid = float_grid(fmt)
    grid = torch.cat([-grid.flip(0), grid])
    mids = (grid[1:] + grid[:-1]) / 2
    x = torch.cat([grid, mids, SPECIALS, torch.tensor([1e9, -1e9, math.inf, -math.inf, math.nan, -0.0, -1e-30])])
    fast, ref = quantize_float(x, fmt), quantize_float_reference(x, fmt)
    assert torch.equal(fast.isnan(), ref.isnan())
    assert torch.equal(fast[~fast.isnan()], ref[~ref.isnan()])
    assert torch.equal(fast[~fast.isnan()].signbit(), ref[~ref.isnan()].signbit())  # -0.0 stays -0.0


def test_a_user_format_sharing_a_name_takes_the_formula_not_the_cast():
    from nncompress.numerics import FloatFormat

    ieee_e4m3 = FloatFormat("fp8_e4m3", 4, 3)  # IEEE-style specials: max 240, not E4M3FN's 448
    x = torch.tensor([300.0, 1.0, -250.0])
    assert quantize_float(x, ieee_e4m3).tolist() == [240.0, 1.0, -240.0]


def test_overflow_saturates_or_becomes_inf():
    big = torch.tensor([1e6, -1e6])
    assert quantize_float(big, FP8_E4M3).tolist() == [448.0, -448.0]
    assert quantize_float(big, FP8_E5M2, saturate=False).tolist() == [math.inf, -math.inf]
    assert torch.isnan(quantize_float(big, FP8_E4M3, saturate=False)).all()
    assert torch.isnan(quantize_float(torch.tensor([math.nan]), FP16)).all()


def test_subnormals_round_to_nearest_even():
    step = 2.0**-9
    got = quantize_float(torch.tensor([0.5 * step, 1.5 * step, 2.5 * step, 0.51 * step]), FP8_E4M3)
    assert got.tolist() == [0.0, 2 * step, 2 * step, step]


def test_integers_and_fixed_point():
    assert int_range(8) == (-128, 127) and int_range(8, signed=False) == (0, 255) and int_range(2) == (-2, 1)
    x = torch.tensor([0.3, -0.3, 100.0, 0.125 + 1 / 32])
    assert quantize_fixed_point(x, 8, 4).tolist() == [0.3125, -0.3125, 127 / 16, 0.125]
    with pytest.raises(ValueError, match="bits=0"):
        int_range(0)


def test_fp4_grids_and_limits_from_the_lecture():
    assert float_grid(FP4_E2M1).tolist() == [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]
    assert float_grid(FP4_E1M2).tolist() == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5]
    assert float_grid(FP4_E3M0).tolist() == [0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0]  # (1 + 0) x 2^(7-3) = 16
    assert (FP4_E2M1.max_value, FP4_E1M2.max_value, FP4_E3M0.max_value) == (6.0, 3.5, 16.0)
    assert (FP4_E2M1.min_subnormal, FP4_E1M2.min_subnormal, FP4_E3M0.min_subnormal) == (0.5, 0.5, 0.25)
    assert FP4_E3M0.max_subnormal == 0.0  # no mantissa bit: the e = 0 codes are only +-0
    assert bits_to_float(torch.arange(16), FP4_E2M1).tolist() == [0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5,
                                                                 -2, -3, -4, -6]


def test_fp4_rounding_ties_to_the_even_code_and_saturates():
    x = torch.tensor([0.25, 0.75, 1.25, 2.5, 5.0, 7.0, -100.0, math.inf])
    assert quantize_float(x, FP4_E2M1).tolist() == [0.0, 1.0, 1.0, 2.0, 4.0, 6.0, -6.0, 6.0]
    assert quantize_float(x, FP4_E2M1, saturate=False).tolist()[-2:] == [-6.0, 6.0]  # no inf in FP4
    # E3M0: a tie between 2^e and 2^(e+1) goes to the even biased exponent (0.5 = e 2, 2 = e 4, 8 = e 6)
    ties = torch.tensor([0.125, 0.375, 0.75, 1.5, 3.0, 6.0, 12.0, 24.0])
    assert quantize_float(ties, FP4_E3M0).tolist() == [0.0, 0.5, 0.5, 2.0, 2.0, 8.0, 8.0, 16.0]


@pytest.mark.parametrize("fmt,dtype,view", [(FP16, torch.float16, torch.int16), (BF16, torch.bfloat16, torch.int16),
                                            (FP8_E4M3, torch.float8_e4m3fn, torch.uint8),
                                            (FP8_E5M2, torch.float8_e5m2, torch.uint8)])
def test_bit_codes_match_torch_bit_patterns(fmt, dtype, view):
    torch.manual_seed(0)
    x = torch.cat([torch.randn(20000) * 10, torch.randn(2000) * 1e-3, torch.randn(500) * 1e-6, SPECIALS])
    cast = x[x.abs() <= fmt.max_value].to(dtype)
    torch_codes = cast.view(view).long() & ((1 << fmt.bits) - 1)
    assert torch.equal(float_to_bits(cast.float(), fmt).long(), torch_codes)
    assert torch.equal(bits_to_float(torch_codes, fmt), cast.float())


def test_every_code_round_trips():
    for fmt in (FP16, BF16, FP8_E4M3, FP8_E5M2, FP4_E2M1, FP4_E1M2, FP4_E3M0):
        grid = float_grid(fmt)
        values = torch.cat([grid, -grid])
        assert torch.equal(bits_to_float(float_to_bits(values, fmt), fmt), values), fmt.name
        assert torch.equal(quantize_float(values, fmt), values), fmt.name
    assert len(float_grid(FP8_E4M3)) == 127 and float_grid(FP8_E4M3)[-1] == 448  # S.1111.111 is NaN
    assert len(float_grid(FP8_E5M2)) == 124 and float_grid(FP8_E5M2)[-1] == 57344  # e = 31 is inf / NaN


def test_unknown_format_name_suggests():
    with pytest.raises(UserError, match="unknown float format 'fp4_e2m2'.*Did you mean 'fp4_e2m1'"):
        float_format("fp4_e2m2")
