"""LSQ (Esser et al. 2020): the lecture's piecewise step gradient, g scaling, init, codes in range."""
import math

import pytest
import torch
from torch import nn

import nncompress as nc
from nncompress.parametrize import transforms
from nncompress.quant.lsq import (LSQ, LSQActQuantizer, LSQWeight, grad_scale, initial_step, lsq_levels, lsq_quantize,
                                  mse_step)
from nncompress.quant.granularity import PerChannel, PerTensor


def lecture_ds(v: torch.Tensor, s: float, q_n: int, q_p: int) -> torch.Tensor:
    """d v_hat / d s from the slide "LSQ: Learned Step size Quantization" (seeds 000 / 002, eq. 3)."""
    r = v / s
    return torch.where(r <= -q_n, torch.tensor(float(-q_n)),
                       torch.where(r >= q_p, torch.tensor(float(q_p)), -r + torch.round(r)))


def test_step_gradient_is_the_lecture_piecewise_formula():
    q_n, q_p = lsq_levels(3, signed=True)  # (4, 3)
    assert (q_n, q_p) == (4, 3)
    v = torch.tensor([0.3, 1.3, -0.7, 2.2, -5.0, 9.0, 3.0, -4.0, 2.9])  # last three: the clip ends exactly / just inside
    s = torch.tensor(1.0, requires_grad=True)
    upstream = torch.tensor([1.0, 2.0, -1.0, 0.5, 1.0, 1.0, 1.0, 1.0, 3.0])
    (lsq_quantize(v, s, q_n, q_p) * upstream).sum().backward()
    expected = lecture_ds(v, 1.0, q_n, q_p)
    assert expected.tolist() == pytest.approx([-0.3, -0.3, -0.3, -0.2, -4.0, 3.0, 3.0, -4.0, 0.1], abs=1e-6)
    assert float(s.grad) == pytest.approx(float((expected * upstream).sum()), abs=1e-6)


def test_step_gradient_per_element_and_grad_scale():
    v = torch.tensor([0.26, -0.9, 0.74, 5.0])
    for g in (1.0, 0.125):
        s = torch.tensor(0.5, requires_grad=True)
        lsq_quantize(v, s, 2, 1, g).sum().backward()
        assert float(s.grad) == pytest.approx(g * float(lecture_ds(v, 0.5, 2, 1).sum()), rel=1e-6)
    # g = 1 / sqrt(N Q_P): 4-bit weights of a 3x3x16 kernel
    assert grad_scale(144, 7) == pytest.approx(1 / math.sqrt(144 * 7))


def test_value_gradient_is_the_ste_inside_and_zero_at_the_clip_ends():
    v = torch.tensor([0.3, -4.5, 3.5, -3.9, 2.4], requires_grad=True)
    lsq_quantize(v, torch.tensor(1.0), 4, 3).sum().backward()
    assert v.grad.tolist() == [1.0, 0.0, 0.0, 1.0, 1.0]


def test_forward_is_round_of_clip_times_step():
    v = torch.tensor([0.26, -0.9, 0.74, 5.0, -7.0])
    out = lsq_quantize(v, torch.tensor(0.5), 4, 3)
    assert out.tolist() == [0.5, -1.0, 0.5, 1.5, -2.0]


def test_initialisation_and_per_channel_grad_scale():
    torch.manual_seed(0)
    w = torch.randn(6, 3, 3, 3)
    per_tensor = LSQWeight(w, 4, PerTensor())
    assert float(per_tensor.step.detach()) == pytest.approx(2 * float(w.abs().mean()) / math.sqrt(7), rel=1e-6)
    assert per_tensor.grad_scale == pytest.approx(1 / math.sqrt(w.numel() * 7))
    per_channel = LSQWeight(w, 4, PerChannel(0))
    assert per_channel.step.shape == (6, 1, 1, 1)
    assert torch.allclose(per_channel.step.flatten(), 2 * w.abs().mean((1, 2, 3)) / math.sqrt(7))
    assert per_channel.grad_scale == pytest.approx(1 / math.sqrt(27 * 7))
    assert float(initial_step(torch.zeros(5), 7)) == 1.0  # all-zero tensor: a positive step anyway


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_codes_stay_in_range_and_decode_equals_forward(bits):
    torch.manual_seed(bits)
    w = torch.randn(8, 20) * 3
    t = LSQWeight(w, bits, PerChannel(0))
    q_n, q_p = lsq_levels(bits, signed=True)
    for value in (w, w * 1000):  # as initialised, and far outside the grid: both clip ends reached
        encoded = t.encode(value)
        codes = encoded.tensors["codes"]
        assert encoded.kind == "linear" and encoded.meta["int_ranges"]["codes"] == [-q_n, q_p]
        assert -q_n <= int(codes.min()) and int(codes.max()) <= q_p
        assert torch.equal(t.decode(encoded), t(value))
    assert int(codes.min()) == -q_n and int(codes.max()) == q_p
    assert len(torch.unique(t(w))) <= 2**bits * 8


def test_activation_quantizer_signed_for_negative_inputs_unsigned_after_relu():
    net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    x = torch.randn(32, 6)
    nc.apply_(net, LSQ(weight_bits=4, act_bits=4), data=[x])
    first, second = net[0].input_quantizer, net[2].input_quantizer
    assert isinstance(first, LSQActQuantizer) and first.spec.q_range == (-8, 7)
    assert second.spec.q_range == (0, 15)
    assert float(first.step.detach()) == pytest.approx(2 * float(x.abs().mean()) / math.sqrt(7), rel=1e-5)
    assert first.grad_scale == pytest.approx(1 / math.sqrt(6 * 7))
    out = net[0].input_quantizer(x * 10).detach()
    codes = torch.round(out / first.step.detach())
    assert float(codes.min()) == -8 and float(codes.max()) == 7 and torch.equal(out, codes * first.step.detach())


def test_steps_train_and_layer_bits_override():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    nc.apply_(net, LSQ(weight_bits=2, act_bits=3, layer_bits={"2": 8}), data=[torch.randn(32, 6)])
    assert transforms(net[0])[0].bits == 2 and transforms(net[2])[0].bits == 8
    assert net[2].input_quantizer.spec.bits == 8 and net[0].input_quantizer.spec.bits == 3
    steps = [p for n, p in net.named_parameters() if n.endswith("step")]
    assert len(steps) == 4
    before = [p.detach().clone() for p in steps]
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(net(torch.randn(16, 6)), torch.randint(0, 3, (16,))).backward()
        opt.step()
    assert all(not torch.equal(a, b.detach()) for a, b in zip(before, steps))


def quant_error(v: torch.Tensor, step: torch.Tensor, q_n: int, q_p: int, dims=None) -> torch.Tensor:
    sq = (torch.clamp(torch.round(v / step), -q_n, q_p) * step - v) ** 2
    return sq.mean() if dims is None else sq.mean(dims, keepdim=True)


@pytest.mark.parametrize("bits,signed", [(2, True), (3, True), (3, False), (4, False)])
def test_mse_step_is_the_least_error_step_of_its_grid_per_channel(bits, signed):
    torch.manual_seed(bits)
    w = torch.randn(5, 40) * torch.tensor([0.1, 1, 3, 0.5, 0.01])[:, None]
    w[2, 0] = 40.0  # an outlier: the least-error step clips it, the paper's start stretches toward it
    if not signed:
        w = w.abs()
    q_n, q_p = lsq_levels(bits, signed)
    step = mse_step(w, q_n, q_p, dims=(1,))
    assert step.shape == (5, 1)
    best = quant_error(w, step, q_n, q_p, (1,))
    amax = w.abs().amax(1, keepdim=True)
    for ratio in torch.arange(1, 101) / 100:  # every candidate of the search grid, and the paper's start
        assert bool((best <= quant_error(w, amax * ratio / q_p, q_n, q_p, (1,)) + 1e-12).all())
    assert bool((best <= quant_error(w, initial_step(w, q_p, (1,)), q_n, q_p, (1,))).all())
    assert float(mse_step(torch.zeros(7), q_n, q_p)) == 1.0


def test_mse_init_sets_weight_and_input_steps_from_the_least_error_grids():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    x = torch.randn(1024, 6)
    x[0, 0] = 30.0
    nc.apply_(net, LSQ(weight_bits=3, act_bits=3, init="mse"), data=[x])
    first = net[0].input_quantizer
    assert float(first.step.detach()) == pytest.approx(float(mse_step(x.flatten(), 4, 3)), rel=1e-6)
    assert float(first.step.detach()) < float(x.abs().max()) / 3  # the outlier is clipped, not covered
    weight = transforms(net[2])[0]
    w = net[2].parametrizations.weight.original.detach()
    torch.testing.assert_close(weight.step.detach(), mse_step(w, 4, 3, dims=(1,)))


@pytest.mark.parametrize("field,kwargs", [("weight_bits", {"weight_bits": 1}), ("act_bits", {"act_bits": 17}),
                                          ("granularity", {"granularity": "group"}), ("init", {"init": "minmax"})])
def test_bad_fields_are_clear_errors(field, kwargs):
    with pytest.raises(nc.UserError, match=field):
        LSQ(**kwargs)


def test_a_step_pushed_below_zero_acts_as_its_magnitude_and_converts():
    """Gradient descent can move a learned step through zero (seen at W2A2 on ResNet-20): the quantizer
    then uses |s|, so the scale convert_ stores, and the integer engine's multipliers, stay positive."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 4))
    nc.quantize_(model, nc.LSQ(weight_bits=2, act_bits=None))
    layer = model[0]
    transform = layer.parametrizations.weight[-1]
    expected = layer.weight.detach().clone()
    with torch.no_grad():
        transform.step.neg_()
    torch.testing.assert_close(layer.weight, expected)
    assert bool((transform.scale > 0).all())
    nc.convert_(model)
    torch.testing.assert_close(layer.weight, expected)
