"""FP8 training: E4M3 forward, E5M2 gradients backward, amax scaling (lecture "FP8" test vectors)."""
import pytest
import torch
from torch import nn

import nncompress as nc
from nncompress.numerics import float_format, quantize_float
from nncompress.parametrize import transforms
from nncompress.quant.fp8_training import FP8ActQuantizer, FP8Training, FP8Weight, round_grad, scaled_round
from nncompress.validate import UserError

E4M3, E5M2 = float_format("fp8_e4m3"), float_format("fp8_e5m2")


def test_e5m2_gradient_rounding_matches_the_grid():
    x = torch.zeros(8, requires_grad=True)
    grad = torch.tensor([57344.0, 60000.0, 2.0**-16, 2.0**-17, 1.5 * 2.0**-16, 0.3, 2.0**-14, -1e6])
    round_grad(x, E5M2, "none").backward(grad)
    # max normal 57344 (S.11110.11), saturating; min subnormal 2^-16; 2^-17 ties to even 0; 0.3 -> 1.25 * 2^-2
    assert x.grad.tolist() == [57344.0, 57344.0, 2.0**-16, 0.0, 2.0**-15, 0.3125, 2.0**-14, -57344.0]


def test_e4m3_forward_limits_from_the_lecture():
    values = torch.tensor([448.0, 449.0, 2.0**-9, 2.0**-10, 0.875 * 2.0**-6, 2.0**-6, 0.3])
    # max normal 448 (S.1111.110), min subnormal 2^-9, max subnormal 0.875 * 2^-6, min normal 2^-6
    assert scaled_round(values, E4M3, "none").tolist() == [448.0, 448.0, 2.0**-9, 0.0, 0.875 * 2.0**-6, 2.0**-6, 0.3125]


def test_scaled_gradient_lands_on_the_e5m2_grid():
    x = torch.zeros(1000, requires_grad=True)
    grad = torch.randn(1000, generator=torch.Generator().manual_seed(0)) * 1e-7  # far below E5M2's 2^-16
    round_grad(x, E5M2).backward(grad)
    scale = grad.abs().max() / E5M2.max_value
    steps = x.grad / scale
    assert torch.allclose(quantize_float(steps, E5M2), steps, rtol=1e-6)
    assert (x.grad != 0).float().mean() > 0.99  # the scale keeps small gradients from flushing to zero


def test_fp8_training_step_reduces_loss_and_weights_stay_fp8():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 3))
    nc.apply_(net, FP8Training(weight_scaling="channel"))
    x = torch.randn(128, 10)
    y = (x @ torch.randn(10, 3)).argmax(1)  # a learnable labelling
    losses = []
    for _ in range(60):
        net.zero_grad()
        loss = nn.functional.cross_entropy(net(x), y)
        loss.backward()
        losses.append(float(loss.detach()))
        with torch.no_grad():
            for p in net.parameters():
                p -= 0.5 * p.grad
    assert losses[-1] < 0.5 * losses[0]
    for layer in (net[0], net[2]):
        t = transforms(layer)[0]
        assert isinstance(t, FP8Weight) and t.scale.shape == (layer.weight.shape[0], 1)  # block-scaled
        steps = (layer.weight / t.scale).detach()
        assert torch.allclose(quantize_float(steps, E4M3), steps, rtol=1e-6, atol=0)
        assert float(steps.abs().amax()) == pytest.approx(448.0)  # amax maps to the format's max
        assert torch.equal(FP8Weight.decode(t.encode(layer.parametrizations.weight.original)), layer.weight)


def test_activations_are_e4m3_and_delayed_scaling_keeps_a_history():
    quant = FP8ActQuantizer(E4M3, E5M2, amax_history=3)
    for amax in (1.0, 4.0, 2.0):
        quant(torch.tensor([amax, -amax / 3]))
    assert sorted(quant.amax_history.tolist()) == [1.0, 2.0, 4.0]
    out = quant(torch.tensor([8.0, 0.1]))  # scale from the history's 4.0: 8.0 saturates at 448 s = 4.0
    assert out.tolist()[0] == pytest.approx(4.0)
    jit = FP8ActQuantizer(E4M3, None)
    x = torch.randn(1000)
    scale = x.abs().max() / 448
    steps = jit(x) / scale
    assert torch.allclose(quantize_float(steps, E4M3), steps, rtol=1e-6, atol=0)
    assert len(torch.unique(steps.abs())) < 150  # at most 126 finite non-negative E4M3 magnitudes


def test_bad_fields():
    with pytest.raises(UserError, match="weight_format"):
        FP8Training(weight_format="fp16")
    with pytest.raises(UserError, match="amax_history=4 scales activations, but act_format is None"):
        FP8Training(act_format=None, amax_history=4)
