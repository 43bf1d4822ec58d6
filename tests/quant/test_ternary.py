"""TWN and TTQ (quant/ternary.py): the lecture's threshold / scale on a hand example, TTQ's
gradients (eq. 7, 8 of Zhu et al. 2017), and 2-bit storage."""
import pytest
import torch
from torch import nn

import nncompress as nc
from nncompress.config import Context
from nncompress.parametrize import transforms
from nncompress.quant.ternary import TTQ, TWN, TernaryWeight, TrainedTernary, twn_alpha, twn_threshold


def test_twn_threshold_and_alpha_on_a_hand_example():
    w = torch.tensor([0.9, -0.1, 0.05, -0.7, 0.3])
    delta = twn_threshold(w)  # 0.7 * mean|w| = 0.7 * 2.05 / 5
    assert float(delta) == pytest.approx(0.287)
    assert float(twn_alpha(w, delta)) == pytest.approx((0.9 + 0.7 + 0.3) / 3)
    out = TernaryWeight()(w)
    assert out.tolist() == pytest.approx([0.633333, 0, 0, -0.633333, 0.633333], abs=1e-6)


def test_twn_gradient_is_straight_through():
    w = torch.tensor([0.9, -0.1, 0.05, -0.7, 0.3], requires_grad=True)
    TernaryWeight()(w).backward(torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0]))
    assert w.grad.tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]


@pytest.mark.parametrize("level_grad", ["sum", "mean"])
def test_ttq_gradients_to_levels_and_latent_weights(level_grad):
    w = torch.tensor([1.0, -0.8, 0.04, -0.03, 0.5, -0.2], requires_grad=True)
    t = TrainedTernary(torch.tensor(0.6), torch.tensor(0.4), threshold=0.05, level_grad=level_grad)
    out = t(w)  # Delta = 0.05 * max|w| = 0.05: I_p = {0, 4}, I_n = {1, 5}
    assert out.tolist() == pytest.approx([0.6, -0.4, 0.0, 0.0, 0.6, -0.4])
    g = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    out.backward(g)
    grad_wp, grad_wn = 0.1 + 0.5, -(0.2 + 0.6)  # eq. 7 (w_t = -W^n on I_n)
    if level_grad == "mean":
        grad_wp, grad_wn = grad_wp / 2, grad_wn / 2
    assert float(t.wp.grad) == pytest.approx(grad_wp)
    assert float(t.wn.grad) == pytest.approx(grad_wn)
    # eq. 8: W^p g on I_p, g inside the threshold, W^n g on I_n
    assert w.grad.tolist() == pytest.approx([0.6 * 0.1, 0.4 * 0.2, 0.3, 0.4, 0.6 * 0.5, 0.4 * 0.6])


def test_ttq_method_initialises_levels_and_trains_them():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(32, 8))
    w = net[0].weight.detach().clone()
    TTQ().apply(net, Context())
    t = transforms(net[0])[0]
    delta = 0.05 * w.abs().max()
    assert float(t.wp.detach()) == pytest.approx(float(w[w > delta].mean()))
    assert float(t.wn.detach()) == pytest.approx(float(-w[w < -delta].mean()))
    assert set(torch.unique(net[0].weight).tolist()) <= {float(t.wp.detach()), 0.0, -float(t.wn.detach())}
    net(torch.randn(4, 32)).square().sum().backward()
    assert t.wp.grad is not None and t.wn.grad is not None


def test_ternary_weights_store_two_bits_each():
    torch.manual_seed(0)
    for method in (TWN(), TTQ()):
        net = nn.Sequential(nn.Linear(400, 100))
        nc.apply_(net, method)
        x = torch.randn(3, 400)
        before = net(x)
        nc.convert_(net)
        assert torch.equal(net(x), before)
        assert net.state_dict()["0.parametrizations.weight.original"].numel() == 400 * 100 * 2 // 8


def test_bad_settings_are_clear_errors():
    with pytest.raises(nc.UserError, match="threshold=1.5"):
        TTQ(threshold=1.5)
    with pytest.raises(nc.UserError, match="level_grad='median' is not one of"):
        TTQ(level_grad="median")
    with pytest.raises(nc.UserError, match="factor=-1"):
        TWN(factor=-1)
