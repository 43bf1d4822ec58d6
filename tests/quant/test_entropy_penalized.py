"""Entropy-penalized reparameterization (Oktay et al. 2020): the rate term's value and gradient on a
hand example, training lowers the rate, and the range-coded file decodes to the trained model bit
for bit, in about as many bytes as the trained rate."""
import math

import pytest
import torch
from torch import nn

import nncompress as nc
from nncompress.encode.container import parse, serialize
from nncompress.encode.model import decode_model, encode_model
from nncompress.parametrize import find_transform
from nncompress.quant.entropy_penalized import EntropyReparam, FactorizedDensity, latent_bits, model_rate_bits


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def logistic_density() -> FactorizedDensity:
    """filters=(): c(x) = sigmoid(softplus(H) x + b) with softplus(H) = 1 (init_scale 1), b = 0."""
    density = FactorizedDensity(filters=(), init_scale=1.0)
    with torch.no_grad():
        density.biases[0].zero_()
    return density


def test_rate_value_and_gradient_on_a_hand_example():
    # p(y) = sigmoid(y + 1/2) - sigmoid(y - 1/2); at y = 1: 0.817574 - 0.622459 = 0.195115 -> 2.35757 bits,
    # dR/dy = -(sigmoid'(1.5) - sigmoid'(0.5)) / (p ln 2) = (0.235004 - 0.149146) / (0.195115 ln 2) = 0.63484.
    # At y = 0 (the mode): p = 0.244919 -> 2.02963 bits, gradient 0.
    density = logistic_density()
    y = torch.tensor([1.0, 0.0], requires_grad=True)
    bits = latent_bits(density, y)
    p1 = sigmoid(1.5) - sigmoid(0.5)
    p0 = sigmoid(0.5) - sigmoid(-0.5)
    assert float(bits.detach()) == pytest.approx(-math.log2(p1) - math.log2(p0), rel=1e-6)
    assert float(bits.detach()) == pytest.approx(2.35757 + 2.02963, abs=1e-4)
    bits.backward()
    d = lambda x: sigmoid(x) * (1 - sigmoid(x))  # noqa: E731
    assert float(y.grad[0]) == pytest.approx((d(0.5) - d(1.5)) / (p1 * math.log(2)), rel=1e-5)
    assert float(y.grad[0]) == pytest.approx(0.63484, abs=1e-4)
    assert float(y.grad[1]) == pytest.approx(0.0, abs=1e-7)


def test_the_regularizer_is_lambda_times_the_rate_and_reaches_the_weights():
    """Evaluation: R over the rounded latents; training: over phi + U(-1/2, 1/2), with
    dR/dw = dR/dphi / step."""
    net = nn.Sequential(nn.Linear(3, 2))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[0.3, -0.3, 0.0], [0.1, 0.2, -0.1]]))
    method = nc.EntropyPenalized(rate_weight=0.5, init_bits=2, filters=())  # step = 0.3 / 1
    nc.apply_(net, method)
    t = find_transform(net[0], EntropyReparam)
    assert float(t.step) == pytest.approx(0.3) and float(t.scale.detach()) == pytest.approx(0.3)
    assert net[0].weight.flatten().tolist() == pytest.approx([0.3, -0.3, 0.0, 0.0, 0.3, 0.0])  # 0.3 round(w / 0.3)
    with torch.no_grad():  # the hand logistic density: softplus(H) = 1, b = 0
        t.density.biases[0].zero_()
        t.density.matrices[0].fill_(math.log(math.e - 1) / FactorizedDensity.LR_SCALE)
    net.eval()
    latents = torch.tensor([1.0, -1.0, 0.0, 0.0, 1.0, 0.0])
    p = [sigmoid(abs(v) + 0.5) - sigmoid(abs(v) - 0.5) for v in latents.tolist()]
    expected = 0.5 * sum(-math.log2(q) for q in p)
    assert float(method.regularizers(net)[0](net).detach()) == pytest.approx(expected, rel=1e-6)
    net.train()
    torch.manual_seed(7)
    reg = method.regularizers(net)[0](net)
    reg.backward()
    torch.manual_seed(7)
    w = net[0].parametrizations.weight.original.detach()
    y = (w / 0.3 + torch.rand(w.shape) - 0.5).requires_grad_(True)
    (0.5 * latent_bits(logistic_density(), y)).backward()
    assert float(reg.detach()) == pytest.approx(float(0.5 * latent_bits(logistic_density(), y.detach()).detach()), rel=1e-5)
    assert net[0].parametrizations.weight.original.grad.flatten().tolist() == pytest.approx(
        (y.grad / 0.3).flatten().tolist(), rel=1e-4)


def trained_mlp():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 4))
    x = torch.randn(512, 1, 8, 8)
    y = (x.flatten(1)[:, :4] > 0).long().argmax(1)
    method = nc.EntropyPenalized(rate_weight=2e-3, init_bits=6)
    nc.apply_(net, method)
    before = float(sum(model_rate_bits(net).values()))
    loader = [(x[i : i + 64], y[i : i + 64]) for i in range(0, 512, 64)]
    nc.fit(net, loader, nc.TrainConfig(epochs=20, lr=1e-2, optimizer="adam", weight_decay=0.0),
           regularizers=method.regularizers(net))
    return net.eval(), before, x


def test_training_lowers_the_rate_and_the_file_decodes_bit_for_bit():
    net, before, x = trained_mlp()
    rates = {k: float(v) for k, v in model_rate_bits(net).items()}
    assert sum(rates.values()) < 0.5 * before  # e.g. ~5.2 -> ~1 bit per weight
    data = serialize(encode_model(net, {"name": "mlp"}))
    assert data[4:8] == bytes([3, 0, 1, 0])  # the rans codec: minor version 1
    nnc = parse(data)
    for name in ("1", "3"):
        stage = nnc.chains[f"{name}.weight"][-1]
        assert stage.kind == "entropy_penalized"
        assert nnc.storage[f"{name}.weight"][-1]["latents"]["codec"]["name"] == "rans"
        coded = nnc.storage[f"{name}.weight"][-1]["latents"]["bytes"]
        assert coded <= rates[name] / 8 + 8  # the empirical table never codes worse than the learned model
    fresh = nn.Sequential(nn.Flatten(), nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 4))
    decoded = decode_model(nnc, model=fresh)
    for i in (1, 3):
        assert torch.equal(decoded[i].weight, net[i].weight)
        assert torch.equal(decoded[i].bias, net[i].bias)
    assert torch.equal(decoded(x), net(x))


def test_fields_are_checked():
    with pytest.raises(nc.UserError, match="rate_weight"):
        nc.EntropyPenalized(rate_weight=0.0)
    with pytest.raises(nc.UserError, match="init_bits"):
        nc.EntropyPenalized(init_bits=1)
    with pytest.raises(nc.UserError, match="filters"):
        nc.EntropyPenalized(filters=(3, 0))
