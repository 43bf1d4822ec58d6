"""The per-token int8 C kernel (runtime/int8_rows.py, _int8_rows.c): its codes equal the simulation's
bit for bit on hostile rows (all zero, one sign, denormal and huge ranges, exact half steps), its
epilogue is the layer's function, and Int8DynamicLinear gives the same outputs with and without it."""
import pytest
import torch
from torch import nn

import nncompress as nc
from nncompress.quant.primitives import IntSpec, qparams_of_finite_range, quantize
from nncompress.runtime import int8_rows, native
from nncompress.runtime.int8_torch import Int8DynamicLinear
from nncompress.validate import UserError

pytestmark = pytest.mark.skipif(not int8_rows.available(),
                                reason=f"the int8 rows kernel did not build: {native.status('_int8_rows')}")


def hostile_rows() -> torch.Tensor:
    torch.manual_seed(0)
    x = torch.randn(9, 37)
    x[0] = 0.0  # all-zero range: S = 1
    x[1] = -x[1].abs() - 1  # only negative values: Z at the top
    x[2] = x[2].abs() + 1  # only positive values: Z at the bottom
    x[3] *= 1e-40  # denormal range: S <= FLT_MIN -> 1
    x[4] *= 1e30  # huge values
    x[5, 0], x[5, 1] = 30.0, -5.0  # an outlier inside the row
    scale = (30.0 + 5.0) / 255
    x[6] = (torch.arange(37) - 18 + 0.5) * scale  # exact half steps: round half to even
    x[7] = torch.linspace(-1, 1, 37)
    x[8, :] = 3.0  # a constant row
    return x


@pytest.mark.parametrize("bits, signed, shift", [(8, True, 0), (8, False, 128), (8, True, -128), (4, True, 0)])
@pytest.mark.parametrize("per_token", [True, False])
def test_codes_scales_and_zero_points_equal_the_simulation(bits, signed, shift, per_token):
    spec = IntSpec(bits=bits, signed=signed, symmetric=False)
    x = hostile_rows()
    if per_token:
        r_min, r_max = x.amin(1), x.amax(1)
    else:
        r_min, r_max = (r.reshape(1) for r in torch.aminmax(x))
    code_dtype = torch.int8 if -128 <= spec.q_range[0] - shift and spec.q_range[1] - shift <= 127 else torch.uint8
    codes, row_scale, row_term = int8_rows.quantize_rows(x, per_token, spec.q_range, shift, code_dtype)
    scale, zero_point = qparams_of_finite_range(r_min.view(-1, 1), r_max.view(-1, 1), spec)
    expected = quantize(x, scale, zero_point, *spec.q_range) - shift
    assert torch.equal(codes.long(), expected.long())
    assert torch.equal(row_scale, scale.view(-1).expand(len(x)))
    assert torch.equal(row_term, (scale * (shift - zero_point)).view(-1).expand(len(x)))


def test_the_epilogue_is_the_rank_two_update():
    torch.manual_seed(1)
    acc = torch.randint(-2 ** 20, 2 ** 20, (5, 11), dtype=torch.int32)
    row_scale, row_term = torch.rand(5), torch.randn(5)
    col_scale, col_sum, bias = torch.rand(11), torch.randn(11), torch.randn(11)
    expected = (acc.double() * col_scale.double()) * row_scale.double().view(-1, 1) \
        + row_term.double().view(-1, 1) * col_sum.double() + bias.double()
    got = int8_rows.dequantize_rows(acc, row_scale, row_term, col_scale, col_sum, bias)
    torch.testing.assert_close(got.double(), expected, rtol=1e-6, atol=1e-6)
    scaled = acc.float() * col_scale
    torch.testing.assert_close(int8_rows.rescale_rows_(scaled.clone(), row_scale, row_term, col_sum, bias).double(),
                               expected, rtol=1e-6, atol=1e-6)


def test_a_non_finite_row_is_named():
    x = hostile_rows()
    x[6, 3] = float("inf")
    assert int8_rows.quantize_rows(x, True, (-128, 127), 0, torch.int8) == 6
    x[6, 3], x[2, 0] = 0.0, float("nan")
    assert int8_rows.quantize_rows(x, True, (-128, 127), 0, torch.int8) == 2
    x[2, 0], x[7, 36] = 0.0, float("nan")  # the last column: the tail after the vector lanes
    assert int8_rows.quantize_rows(x, True, (-128, 127), 0, torch.int8) == 7
    x[4, 5] = -float("inf")  # per tensor: the first row holding a NaN or an infinity
    assert int8_rows.quantize_rows(x, False, (-128, 127), 0, torch.int8) == 4


@pytest.mark.parametrize("cols", [1, 15, 16, 17, 64, 385])
def test_the_ranges_found_in_c_are_torchs_amin_and_amax(cols):
    """Each row's range (sixteen vector lanes plus a tail) is torch's amin / amax, so its S is the
    simulation's; the extreme value sits in every lane position in turn, and -0.0 is kept apart."""
    torch.manual_seed(cols)
    x = torch.randn(2 * cols + 3, cols)
    for i in range(cols):
        x[2 * i, i], x[2 * i + 1, i] = 50.0 + i, -50.0 - i
    x[-1] = -0.0
    spec = IntSpec(bits=8, signed=True, symmetric=False)
    _, row_scale, row_term = int8_rows.quantize_rows(x, True, spec.q_range, 0, torch.int8)
    scale, zero_point = qparams_of_finite_range(x.amin(1, keepdim=True), x.amax(1, keepdim=True), spec)
    assert torch.equal(row_scale, scale.view(-1))
    assert torch.equal(row_term, (-scale * zero_point).view(-1))


@pytest.mark.parametrize("kernel", ["int_mm", "onednn"])
@pytest.mark.parametrize("per_token", [True, False])
def test_the_layer_gives_the_same_outputs_with_and_without_the_kernel(kernel, per_token):
    torch.manual_seed(2)
    model = nc.convert_(nc.quantize_(nn.Sequential(nn.Linear(40, 24)), nc.DynamicQuant(per_token=per_token)))
    fast = Int8DynamicLinear(model[0], "0", kernel=kernel)
    assert fast.use_native
    slow = Int8DynamicLinear(model[0], "0", kernel=kernel)
    slow.use_native = False
    x = torch.randn(2, 9, 40)
    x[0, 3] *= 50
    with torch.no_grad():
        y = model(x)
        for layer in (fast, slow):
            torch.testing.assert_close(layer(x), y, rtol=0, atol=1e-5 * float(y.abs().max()))
        torch.testing.assert_close(fast(x.transpose(0, 1)), slow(x.transpose(0, 1)), rtol=0, atol=1e-5 * float(y.abs().max()))
        assert fast(x[:0]).shape == (0, 9, 24)
        x[1, 2, 5] = float("nan")
        where = r" \(token 11\)" if per_token else ";"
        with pytest.raises(UserError, match=rf"layer '0': its input contains non-finite values{where}"):
            fast(x)


def test_without_the_kernel_the_layer_keeps_the_torch_path(monkeypatch):
    monkeypatch.setattr(int8_rows, "available", lambda: False)
    model = nc.convert_(nc.quantize_(nn.Sequential(nn.Linear(16, 8)), nc.DynamicQuant(per_token=True)))
    layer = Int8DynamicLinear(model[0], "0", kernel="int_mm")
    assert not layer.use_native
    x = torch.randn(4, 16)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), model(x), rtol=0, atol=1e-5 * float(model(x).abs().max()))


def test_a_float64_default_dtype_or_a_double_layer_keeps_the_outputs_right():
    """The C code reads float32: buffers are float32 whatever the default dtype, and a layer whose
    vectors became float64 (`.double()`) takes the torch path instead of misreading memory."""
    torch.manual_seed(3)
    model = nc.convert_(nc.quantize_(nn.Sequential(nn.Linear(12, 6, bias=False)), nc.DynamicQuant(per_token=True)))
    x = torch.randn(5, 12)
    with torch.no_grad():
        y = model(x)
        previous = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64)
        try:
            layer = Int8DynamicLinear(model[0], "0", kernel="int_mm")
            got = layer(x)
        finally:
            torch.set_default_dtype(previous)
        torch.testing.assert_close(got, y, rtol=0, atol=1e-5 * float(y.abs().max()))
        assert layer.bias_or_zero.dtype == torch.float32 and layer._native_fits(x)
        layer.double()
        assert not layer._native_fits(x)


@pytest.mark.parametrize("per_token", [True, False])
def test_rows_split_over_threads_give_the_same_results(per_token):
    """Large inputs run their rows on torch's OpenMP threads (one runtime shared with torch): codes,
    scales, the epilogue and the first non-finite row are the same at one and at two threads."""
    torch.manual_seed(5)
    x = torch.randn(300, 384) * torch.rand(300, 1) * 10
    bad = x.clone()
    bad[250, 0], bad[17, 5] = float("inf"), float("nan")
    acc = torch.randint(-2 ** 20, 2 ** 20, (300, 384), dtype=torch.int32)
    vectors = [torch.rand(384), torch.randn(384), torch.randn(384)]
    before, found = torch.get_num_threads(), {}
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            codes, row_scale, row_term = int8_rows.quantize_rows(x, per_token, (0, 255), 128, torch.int8)
            found[threads] = (codes, row_scale, row_term, int8_rows.quantize_rows(bad, per_token, (0, 255), 128,
                                                                                  torch.int8),
                              int8_rows.dequantize_rows(acc, row_scale, row_term, *vectors))
    finally:
        torch.set_num_threads(before)
    assert found[1][3] == found[2][3] == 17
    assert all(torch.equal(a, b) for a, b in zip(found[1][:3] + found[1][4:], found[2][:3] + found[2][4:]))
