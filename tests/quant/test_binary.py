"""BinaryConnect, BNN, BWN and XNOR-Net (quant/binary.py): closed forms, STE gradients, stochastic
frequencies, the clipped update, and 1-bit storage in real bytes."""
import copy
import math

import pytest
import torch
from torch import nn

import nncompress as nc
from nncompress.config import Context
from nncompress.parametrize import transforms
from nncompress.quant.binary import (BNN, BWN, BinaryActivation, BinaryConnect, BinaryWeight, XNORNet,
                                     clip_latent_weights_, glorot_h, hard_sigmoid, sign_ste, stochastic_sign)
from nncompress.quant.bn_reestimate import reestimate_batchnorm_


def test_bwn_alpha_is_the_l1_closed_form_and_minimises_the_error():
    torch.manual_seed(0)
    layer = nn.Conv2d(3, 4, 3)
    w = layer.weight.detach().clone()
    BWN().apply(nn.Sequential(layer), Context())
    alpha = w.abs().sum((1, 2, 3)) / 27  # ||W_o||_1 / n
    expected = alpha.view(-1, 1, 1, 1) * torch.where(w >= 0, 1.0, -1.0)
    assert torch.allclose(layer.weight, expected, rtol=0, atol=1e-7)
    for o in range(4):  # alpha* minimises ||W - alpha B||^2 (J is a parabola in alpha)
        b = torch.sign(w[o])
        errors = [float(((w[o] - a * b) ** 2).sum()) for a in (alpha[o] * 0.99, alpha[o], alpha[o] * 1.01)]
        assert errors[1] < errors[0] and errors[1] < errors[2]


def test_binary_connect_deterministic_uses_the_glorot_constant_and_sign_of_zero_is_plus_one():
    layer = nn.Linear(300, 100)
    with torch.no_grad():
        layer.weight.zero_()
        layer.weight[0, :3] = torch.tensor([-0.5, 0.2, -1e-6])
    BinaryConnect().apply(nn.Sequential(layer), Context())
    h = math.sqrt(1.5 / (300 + 100))
    assert glorot_h(layer.parametrizations.weight.original) == pytest.approx(h)
    assert layer.weight[0, :4].tolist() == pytest.approx([-h, h, -h, h])
    assert torch.unique(layer.weight).tolist() == pytest.approx([-h, h])


def test_stochastic_binarization_frequency_matches_hard_sigmoid():
    w = torch.tensor([-1.5, -0.6, 0.0, 0.3, 0.9, 2.0]).repeat(20000, 1)
    samples = stochastic_sign(w, torch.Generator().manual_seed(7))
    freq = (samples > 0).float().mean(0)
    p = hard_sigmoid(w[0])
    assert p.tolist() == pytest.approx([0.0, 0.2, 0.5, 0.65, 0.95, 1.0])
    sigma = torch.sqrt(p * (1 - p) / 20000)
    assert ((freq - p).abs() <= 4 * sigma + 1e-12).all(), (freq, p)


def test_stochastic_weights_resample_per_training_step_and_use_sign_in_eval():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 32))
    BinaryConnect(stochastic=True, scaling="none", seed=1).apply(net, Context())
    t = transforms(net[0])[0]
    first, again = net[0].weight.detach().clone(), net[0].weight.detach().clone()
    assert torch.equal(first, again) and int(t.step) == 0  # no backward: same sample
    net(torch.randn(2, 64)).sum().backward()
    assert int(t.step) == 1 and not torch.equal(net[0].weight.detach(), first)
    net.eval()
    latent = net[0].parametrizations.weight.original.detach()
    assert torch.equal(net[0].weight, torch.where(latent >= 0, 1.0, -1.0))


def test_binary_connect_gradient_is_straight_through_and_update_is_clipped():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 4))
    BinaryConnect(scaling="none").apply(net, Context())
    latent = net[0].parametrizations.weight.original
    x = torch.randn(5, 8)
    net(x).sum().backward()
    assert torch.allclose(latent.grad, x.sum(0).expand(4, 8))  # dC/dw_b passed to w unchanged
    with torch.no_grad():
        latent -= 10 * latent.grad  # a large step leaves [-1, 1]
    assert latent.abs().max() > 1
    clip_latent_weights_(net)
    assert latent.abs().max() == 1.0


def test_bnn_activation_ste_cancels_gradient_where_input_exceeds_one():
    x = torch.tensor([-3.0, -1.0, -0.2, 0.0, 0.7, 1.0, 1.5], requires_grad=True)
    out = sign_ste(x)
    out.backward(torch.ones_like(x))
    assert out.tolist() == [-1, -1, -1, 1, 1, 1, 1]
    assert x.grad.tolist() == [0, 1, 1, 1, 1, 1, 0]
    net = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3), nn.ReLU(), nn.Linear(3, 2))
    BNN().apply(net, Context())
    assert not hasattr(net[0], "input_quantizer")  # the image stays real-valued
    quantizer = net[2].input_quantizer
    y = quantizer(torch.randn(16, 5) * 3)
    assert set(y.unique().tolist()) == {-1.0, 1.0}


def test_xnor_keeps_first_and_last_layers_and_scales_inputs_by_beta():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 6, 3), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 4, 3))
    XNORNet().apply(net, Context())
    assert not transforms(net[0]) and not transforms(net[5]) and not hasattr(net[5], "input_quantizer")
    quantizer = net[2].input_quantizer
    quantizer.eval()  # BatchNorm at its initial running statistics: the identity
    x = torch.randn(2, 4, 6, 6)
    beta = x.abs().mean((1, 2, 3))
    assert torch.allclose(quantizer(x), beta.view(2, 1, 1, 1) * torch.where(x >= 0, 1.0, -1.0))
    assert isinstance(quantizer, BinaryActivation) and quantizer.scaled


def test_converted_binary_layer_stores_one_bit_per_weight_plus_scales(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(1000, 1000))
    nc.apply_(net, BWN())
    x = torch.randn(4, 1000)
    before = net(x)
    nc.convert_(net)
    assert torch.equal(net(x), before)
    state = net.state_dict()
    assert state["0.parametrizations.weight.original"].numel() == 1000 * 1000 // 8  # 1 bit per weight, uint8
    assert state["0.parametrizations.weight.0.scale"].numel() == 1000  # one alpha per output row
    path = nc.save_model(net, tmp_path / "bwn.safetensors", recipe=[BWN()])
    size = path.stat().st_size
    payload = 125_000 + 4_000 + 4_000  # bits + alphas + float32 bias
    assert payload < size < payload + 4_096, size  # the rest is the header
    loaded, _ = nc.load_model(path, model=nn.Sequential(nn.Linear(1000, 1000)), example=x)
    assert torch.equal(loaded(x), before)


def test_bad_settings_are_clear_errors():
    with pytest.raises(nc.UserError, match="scaling='l2' is not one of"):
        BinaryConnect(scaling="l2")
    with pytest.raises(nc.UserError, match="no layer left to binarize"):
        XNORNet().apply(nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2)), Context())
    with pytest.raises(nc.UserError, match="scaling"):
        BinaryWeight(scaling="bad")


def test_nnc_container_stores_binary_and_ternary_weights_in_their_bits():
    from nncompress.encode.container import serialize
    from nncompress.encode.model import decode_model, encode_model
    from nncompress.quant.ternary import TWN

    for method, bits in ((BWN(), 1), (TWN(), 2)):
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(1000, 1000))
        nc.apply_(net, method)
        nnc = encode_model(net, {"arch": "custom"})
        size = len(serialize(nnc))
        assert size < 1000 * 1000 * bits // 8 + 8_000 + 4_096, (method, size)  # codes + scales / bias + header
        x = torch.randn(2, 1000)
        assert torch.equal(decode_model(nnc, nn.Sequential(nn.Linear(1000, 1000)))(x), net(x))


def _conv_bn_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Dropout(0.5),
                         nn.Conv2d(6, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 3))


def _deterministic_stats(net: nn.Module, batches: list) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each BatchNorm's mean over `batches` of the batch mean / unbiased variance of its input, for the
    eval-mode network (sign weights, no dropout) whose BatchNorms normalise with batch statistics:
    what its running statistics should hold."""
    net = copy.deepcopy(net)
    norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    for norm in norms:  # eval mode without running statistics: torch normalises with the batch's
        norm.track_running_stats, norm.running_mean, norm.running_var = False, None, None
    seen: dict[nn.Module, list] = {m: [] for m in norms}
    hooks = [m.register_forward_pre_hook(lambda m, args: seen[m].append(args[0])) for m in norms]
    net.eval()
    with torch.no_grad():
        for x, _ in batches:
            net(x)
    for hook in hooks:
        hook.remove()
    return [(torch.stack([x.mean((0, 2, 3)) for x in seen[m]]).mean(0),
             torch.stack([x.transpose(0, 1).flatten(1).var(1) for x in seen[m]]).mean(0)) for m in norms]


def test_reestimate_batchnorm_uses_the_evaluated_sign_network_and_restores_modes():
    torch.manual_seed(0)
    net = _conv_bn_net()
    BinaryConnect(stochastic=True).apply(net, Context())
    batches = [(torch.randn(16, 1, 6, 6), torch.zeros(16, dtype=torch.long)) for _ in range(3)]
    net.train()
    for x, _ in batches:  # running statistics of sampled networks, as training leaves them
        net(x)
    net[3].eval()  # a mixed state must come back as it was
    expected = _deterministic_stats(net, batches)  # the sign(w) network's statistics (eval-mode pass)
    net.train()
    net[3].eval()
    assert reestimate_batchnorm_(net, batches) == ["1", "5"]
    for norm, (mean, var) in zip((net[1], net[5]), expected):
        assert torch.allclose(norm.running_mean, mean, atol=1e-5) and torch.allclose(norm.running_var, var, atol=1e-5)
        assert norm.momentum == 0.1 and norm.training
    assert not net[3].training and transforms(net[0])[0].training
    with pytest.raises(nc.UserError, match=r"got no batches: the statistics of 2 BatchNorm layer\(s\) \(1, 5\)"):
        reestimate_batchnorm_(net, [])
    assert torch.allclose(net[5].running_var, expected[1][1], atol=1e-5)  # left as they were
    assert reestimate_batchnorm_(nn.Sequential(nn.Linear(2, 2)), iter(())) == []  # no BatchNorm: no pass


def test_stochastic_binary_connect_is_evaluated_with_batchnorm_statistics_of_its_sign_network():
    from nncompress.flows.binary import binarize_and_train
    from nncompress.train import TrainConfig
    from nncompress.zoo import Dataset

    torch.manual_seed(0)
    x, y = torch.randn(96, 1, 6, 6), torch.randint(0, 3, (96,))
    data = Dataset("tiny", x[:64], y[:64], x[64:], y[64:], num_classes=3)
    config = TrainConfig(epochs=1, lr=0.05)
    for stochastic in (True, False):
        net = _conv_bn_net()
        binarize_and_train(net, BinaryConnect(stochastic=stochastic), data, config, batch_size=16)
        expected = _deterministic_stats(net, list(zip(x[:64].split(16), y[:64].split(16))))
        matches = [torch.allclose(n.running_mean, m, atol=1e-5) and torch.allclose(n.running_var, v, atol=1e-5)
                   for n, (m, v) in zip((net[1], net[5]), expected)]
        assert matches == [stochastic] * 2  # deterministic BinaryConnect keeps its training statistics
