"""PACT (Choi et al. 2018): the clip formula, k-bit levels, alpha's STE gradient and its L2 term."""
import pytest
import torch
from torch import nn

import nncompress as nc
from nncompress.quant.activation import StaticQuantizer
from nncompress.quant.pact import PACT, PACTQuantizer, pact_clip, pact_quantize


def test_clip_formula_is_the_lectures_piecewise_function():
    x = torch.tensor([-3.0, -0.1, 0.0, 0.4, 1.99, 2.0, 7.5])
    y = pact_clip(x, torch.tensor(2.0))
    assert y.tolist() == pytest.approx([0.0, 0.0, 0.0, 0.4, 1.99, 2.0, 2.0], abs=1e-6)


def test_quantized_forward_is_round_of_y_times_levels_over_alpha():
    alpha, bits = torch.tensor(3.0), 2
    x = torch.tensor([-1.0, 0.4, 0.6, 1.4, 2.2, 2.6, 9.0])
    # y_q = round(y (2^k - 1) / alpha) alpha / (2^k - 1): levels 0, 1, 2, 3 (step 1.0)
    assert pact_quantize(x, alpha, bits).tolist() == [0.0, 0.0, 1.0, 1.0, 2.0, 3.0, 3.0]
    q = PACTQuantizer(4, 6.0)
    out = q(torch.linspace(-2, 8, 101)).detach()
    codes = torch.round(out / q.scale)
    assert float(codes.min()) == 0 and float(codes.max()) == 15 and torch.equal(out, codes * q.scale)


def test_alpha_gradient_is_one_above_alpha_and_zero_below():
    alpha = torch.tensor(2.0, requires_grad=True)
    x = torch.tensor([-1.0, 0.5, 1.9, 2.0, 2.5, 10.0], requires_grad=True)
    upstream = torch.tensor([1.0, 2.0, 4.0, 8.0, 16.0, 32.0])
    (pact_quantize(x, alpha, 4) * upstream).sum().backward()
    assert float(alpha.grad) == 8.0 + 16.0 + 32.0  # x >= alpha
    assert x.grad.tolist() == [0.0, 2.0, 4.0, 0.0, 0.0, 0.0]  # 1 on [0, alpha) (STE through the rounding)


def test_gradients_match_autograd_of_the_formula_with_an_ste():
    torch.manual_seed(0)
    x = (torch.randn(200) * 2).requires_grad_()
    alpha = torch.tensor(1.7, requires_grad=True)
    pact_quantize(x, alpha, 3).pow(2).sum().backward()
    ours = (x.grad.clone(), alpha.grad.clone())
    x.grad, alpha.grad = None, None
    y = pact_clip(x, alpha)
    q = torch.round(y.detach() * 7 / alpha.detach()) * alpha.detach() / 7
    (y + (q - y).detach()).pow(2).sum().backward()  # the slide: d y_q / d y = 1
    assert torch.allclose(ours[0], x.grad) and torch.allclose(ours[1], alpha.grad)


def test_method_l2_on_alpha_and_first_layer_keeps_a_static_quantizer():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    method = PACT(weight_bits=4, act_bits=4, alpha_decay=0.01)
    x = torch.randn(64, 6)
    hidden = net[1](net[0](x)).detach()
    nc.apply_(net, method, data=[x])
    assert isinstance(net[0].input_quantizer, StaticQuantizer)  # negative inputs: PACT would clip them away
    assert isinstance(net[2].input_quantizer, PACTQuantizer)
    assert float(net[2].input_quantizer.alpha.detach()) == pytest.approx(float(hidden.max()), rel=1e-6)  # calibrated init
    (penalty,) = method.regularizers(net)
    alphas = [float(net[i].input_quantizer.alpha.detach()) for i in (2, 4)]
    assert float(penalty(net)) == pytest.approx(0.5 * 0.01 * sum(a * a for a in alphas), rel=1e-6)
    penalty(net).backward()
    assert float(net[2].input_quantizer.alpha.grad) == pytest.approx(0.01 * alphas[0], rel=1e-5)  # d/d alpha = lambda alpha


def test_bad_alpha_is_a_clear_error():
    with pytest.raises(nc.UserError, match="alpha_init"):
        PACT(alpha_init=0.0)
    with pytest.raises(nc.UserError, match="alpha_decay"):
        PACT(alpha_decay=-1.0)
