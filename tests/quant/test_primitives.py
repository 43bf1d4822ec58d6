import math

import pytest
import torch

from nncompress.quant.fake import FakeQuant, tensor_range
from nncompress.quant.granularity import PerChannel, PerGroup, PerTensor
from nncompress.quant.primitives import IntSpec, choose_qparams, dequantize, fake_quantize, quantize

W = torch.tensor([[2.09, -0.98, 1.48, 0.09], [0.05, -0.14, -1.08, 2.12],
                  [-0.91, 1.92, 0.0, -1.03], [1.87, 0.0, 1.53, 1.49]])


def test_seed_001_two_bit_affine_example():
    spec = IntSpec(bits=2, signed=True, symmetric=False)
    scale, zero_point = choose_qparams(W.min(), W.max(), spec)
    assert scale.item() == pytest.approx(3.2 / 3)  # the slide shows 1.07
    assert zero_point.item() == -1
    q = quantize(W, scale, zero_point, *spec.q_range)
    assert q.tolist() == [[1, -2, 0, -1], [-1, -1, -2, 1], [-2, 1, -1, -2], [1, -1, 0, 0]]
    slide = torch.tensor([[2.14, -1.07, 1.07, 0], [0, 0, -1.07, 2.14], [-1.07, 2.14, 0, -1.07], [2.14, 0, 1.07, 1.07]])
    torch.testing.assert_close(dequantize(q, scale, zero_point), slide, atol=0.01, rtol=0)


def test_seed_004_per_tensor_vs_per_channel_symmetric_two_bit():
    spec = IntSpec(bits=2, signed=True, symmetric=True)
    errors = {}
    for name, gran in (("tensor", PerTensor()), ("channel", PerChannel(0))):
        fq = FakeQuant.fit(W, spec, gran)
        errors[name] = torch.linalg.norm(W - fq(W)).item()
    assert errors["tensor"] == pytest.approx(2.28, abs=0.005)
    assert errors["channel"] == pytest.approx(2.08, abs=0.005)


def test_seed_000_int8_example_and_the_slides_slip():
    spec = IntSpec(bits=8, signed=False, symmetric=False)
    scale, zero_point = choose_qparams(torch.tensor(-31.4), torch.tensor(65.7), spec)
    assert scale.item() == pytest.approx(97.1 / 255) and zero_point.item() == 82
    q = quantize(torch.tensor(10.5), scale, zero_point, 0, 255)
    assert q.item() == 110 and dequantize(q, scale, zero_point).item() == pytest.approx(10.66, abs=0.005)
    # The slide rounds S to 0.38, giving Z = 83, and then writes 112 -> 11.02; with S = 0.38 the
    # correct code is round(10.5 / 0.38) + 83 = 28 + 83 = 111 -> 10.64.
    s, z = torch.tensor(0.38), torch.tensor(83.0)
    assert torch.round(torch.tensor(31.4) / s).item() == 83
    assert quantize(torch.tensor(10.5), s, z, 0, 255).item() == 111
    assert dequantize(torch.tensor(111.0), s, z).item() == pytest.approx(10.64)


def test_symmetric_full_and_restricted_range():
    x = torch.tensor([-1.0, 0.5, 1.0])
    s_r, _ = choose_qparams(x.min(), x.max(), IntSpec(bits=8, restricted=True))
    s_f, _ = choose_qparams(x.min(), x.max(), IntSpec(bits=8, restricted=False))
    assert s_r.item() == pytest.approx(1 / 127) and s_f.item() == pytest.approx(1 / 128)
    assert IntSpec(bits=8).q_range == (-127, 127) and IntSpec(bits=8, restricted=False).q_range == (-128, 127)


@pytest.mark.parametrize("value", [0.0, 3.5, -2.0])
def test_constant_tensors_get_a_defined_result(value):
    x = torch.full((4, 4), value)
    for spec in (IntSpec(bits=4), IntSpec(bits=4, symmetric=False, signed=False)):
        scale, zp = choose_qparams(x.min(), x.max(), spec)
        assert torch.isfinite(scale).all() and scale.item() > 0
        out = dequantize(quantize(x, scale, zp, *spec.q_range), scale, zp)
        assert torch.isfinite(out).all()
        assert torch.allclose(out, x, atol=scale.item())


def test_nan_and_inf_are_clear_errors():
    with pytest.raises(ValueError, match="non-finite"):
        choose_qparams(torch.tensor(math.nan), torch.tensor(1.0), IntSpec())
    with pytest.raises(ValueError, match="non-finite"):
        choose_qparams(torch.tensor(0.0), torch.tensor(math.inf), IntSpec())


def test_ste_gradient_is_one_inside_and_zero_where_clipped():
    scale, zp = torch.tensor(0.1), torch.tensor(0.0)
    x = torch.tensor([-20.0, -0.33, 0.0, 0.74, 20.0], requires_grad=True)
    fake_quantize(x, scale, zp, -127, 127).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]


@pytest.mark.parametrize("gran", [PerTensor(), PerChannel(0), PerChannel(1), PerGroup(5)])
@pytest.mark.parametrize("spec", [IntSpec(bits=3), IntSpec(bits=8, symmetric=False), IntSpec(bits=16)])
def test_encode_decode_reproduces_forward_exactly(gran, spec):
    torch.manual_seed(0)
    w = torch.randn(6, 7, 3)
    fq = FakeQuant.fit(w, spec, gran)
    encoded = fq.encode(w)
    assert encoded.tensors["codes"].dtype in (torch.int8, torch.uint8, torch.int16, torch.int32)
    q_min, q_max = spec.q_range
    assert encoded.tensors["codes"].min() >= q_min and encoded.tensors["codes"].max() <= q_max
    assert torch.equal(fq.decode(encoded), fq(w))


def test_more_bits_more_sqnr_and_group_beats_tensor():
    from nncompress.analysis.metrics import sqnr_db

    torch.manual_seed(0)
    w = torch.randn(64, 256) * torch.logspace(-1, 1, 64).unsqueeze(1)
    sqnr = {b: sqnr_db(w, FakeQuant.fit(w, IntSpec(bits=b), PerChannel(0))(w)) for b in (4, 6, 8)}
    assert 35 < sqnr[8] and sqnr[4] + 8 < sqnr[6] < sqnr[8] - 8  # about 6 dB per bit
    assert sqnr_db(w, FakeQuant.fit(w, IntSpec(bits=4), PerGroup(32))(w)) > sqnr_db(w, FakeQuant.fit(w, IntSpec(bits=4), PerTensor())(w)) + 5


def test_tensor_range_shapes():
    w = torch.randn(4, 3, 2)
    lo, hi = tensor_range(w, PerChannel(0))
    assert lo.shape == (4, 1, 1) and torch.equal(hi.flatten(), w.reshape(4, -1).amax(1))
