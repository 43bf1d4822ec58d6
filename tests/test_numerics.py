import math

import pytest
import torch

from nncompress.numerics import (BF16, FP8_E4M3, FP8_E5M2, FP16, decompose_float32, int_range, quantize_fixed_point,
                                 quantize_float)


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
    assert torch.equal(quantize_float(x, fmt), x.to(dtype).float())


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
