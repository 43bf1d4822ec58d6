"""Soft weight-sharing (Ullrich et al. 2017): the prior's value and gradient on a hand example, training
pulls weights to the components, and the snapped model encodes as [mask, codebook] exactly."""
import math

import pytest
import torch
from torch import nn

import nncompress as nc
from nncompress.encode.container import read_nnc, write_nnc
from nncompress.encode.model import decode_model, encode_model
from nncompress.quant.kmeans import SharedWeights
from nncompress.quant.soft_sharing import (MixturePrior, SoftWeightSharing, complexity, mixture_log_prob,
                                          mixture_neg_log_prob, snap_to_mixture_)
from nncompress.parametrize import find_transform
from nncompress.prune.mask import Mask
from nncompress.train import make_optimizer


def hand_prior(w: torch.Tensor) -> MixturePrior:
    """Zero component and one at mu_1 = 1, both precision 4 (sigma 0.5), pi_0 = pi_1 = 1/2."""
    prior = MixturePrior(w, components=2, zero_mixing=0.5, init_std=0.5)
    with torch.no_grad():
        prior.means.fill_(1.0)
    return prior


def test_prior_value_and_gradient_on_a_hand_example():
    # w = 0.25: N(w|0) ~ exp(-0.125), N(w|1) ~ exp(-1.125), so r_0 = sigmoid(1), r_1 = 1 / (1 + e).
    w = torch.tensor([0.25], requires_grad=True)
    prior = hand_prior(w)
    assert torch.exp(prior.log_precisions).tolist() == pytest.approx([4.0, 4.0])
    nll = prior.neg_log_prob(w)
    normal = lambda x, mu: math.sqrt(4 / (2 * math.pi)) * math.exp(-2 * (x - mu) ** 2)  # noqa: E731
    assert float(nll.detach()) == pytest.approx(-math.log(0.5 * normal(0.25, 0) + 0.5 * normal(0.25, 1)), rel=1e-6)
    nll.backward()
    r1 = 1 / (1 + math.e)
    # dL/dw = sum_j r_j lambda_j (w - mu_j) = 4 (0.25 - r_1)
    assert float(w.grad) == pytest.approx(4 * (0.25 - r1), rel=1e-5)
    # dL/dmu_1 = -r_1 lambda_1 (w - mu_1) = 3 r_1
    assert float(prior.means.grad) == pytest.approx(3 * r1, rel=1e-5)
    assert prior.responsibilities(w.detach())[0].tolist() == pytest.approx([1 - r1, r1], rel=1e-6)


def test_one_pass_value_and_gradients_equal_autograd_through_the_mixture():
    torch.manual_seed(0)
    w = (0.1 * torch.randn(2, 300, dtype=torch.float64)).requires_grad_()
    means = torch.cat([torch.zeros(1, dtype=torch.float64), torch.linspace(-0.3, 0.3, 6, dtype=torch.float64)])
    log_precisions = 4 + torch.randn(7, dtype=torch.float64)
    log_mixing = torch.log_softmax(torch.randn(7, dtype=torch.float64), 0)
    inputs = [w] + [t.requires_grad_() for t in (means, log_precisions, log_mixing)]
    reference = -mixture_log_prob(*inputs).sum()
    fused = mixture_neg_log_prob(*inputs)
    assert float(fused.detach()) == pytest.approx(float(reference.detach()), rel=1e-12)
    for got, want in zip(torch.autograd.grad(fused, inputs), torch.autograd.grad(reference, inputs)):
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    small = [w[:, :5].detach().requires_grad_()] + inputs[1:]
    assert torch.autograd.gradcheck(mixture_neg_log_prob, small)


def test_float32_gradients_hold_where_training_takes_the_weights():
    """Weights sitting on their components' means at precision 1e4 (std 0.01, the Gamma hyperpriors'
    scale): float32 gradients within 1e-3 of float64 autograd (raw moments were 1e-2 off here)."""
    torch.manual_seed(1)
    means = torch.cat([torch.zeros(1), torch.linspace(-0.5, 0.5, 16)])
    w = means[torch.randint(0, 17, (100_000,))] + 0.01 * torch.randn(100_000)
    log_precisions = torch.full((17,), math.log(1e4))
    log_mixing = torch.log_softmax(torch.randn(17), 0)
    inputs32 = [t.clone().requires_grad_() for t in (w, means, log_precisions, log_mixing)]
    inputs64 = [t.double().requires_grad_() for t in (w, means, log_precisions, log_mixing)]
    got = torch.autograd.grad(mixture_neg_log_prob(*inputs32), inputs32)
    want = torch.autograd.grad(-mixture_log_prob(*inputs64).sum(), inputs64)
    for name, g, r in zip(("w", "means", "log_precisions", "log_mixing"), got, want):
        assert float((g.double() - r).abs().max() / r.abs().max()) < 1e-3, name


def test_a_float64_model_trains_under_a_float32_prior():
    net = nn.Sequential(nn.Linear(4, 3)).double()
    method = SoftWeightSharing(components=3, dataset_size=100)
    nc.apply_(net, method)
    value = method.regularizers(net)[0](net)
    value.backward()
    prior = find_transform(net[0], MixturePrior)
    assert value.dtype == torch.float64 and prior.means.grad.dtype == torch.float32
    assert torch.isfinite(prior.log_precisions.grad).all()


def test_gamma_hyperprior_adds_its_gradient():
    net = nn.Sequential(nn.Linear(3, 1, bias=False))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[0.25, 0.25, 0.25]]))
    nc.apply_(net, SoftWeightSharing(components=2, zero_mixing=0.5, init_std=0.5))
    prior = find_transform(net[0], MixturePrior)
    with torch.no_grad():
        prior.means.fill_(1.0)
    zero = complexity(net, (1.0, 0.0), (1.0, 0.0))  # flat hyperpriors: the mixture alone
    with_gamma = complexity(net, (3.0, 2.0), (5.0, 0.5))  # -(a-1) log lam + b lam, lam = 4
    extra = (-(2) * math.log(4) + 2 * 4) + (-(4) * math.log(4) + 0.5 * 4)
    assert float((with_gamma - zero).detach()) == pytest.approx(extra, rel=1e-5)


def test_training_clusters_and_snapping_prunes_and_shares():
    torch.manual_seed(0)
    x = torch.randn(256, 10)
    y = (x[:, 0] > 0).long()
    net = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 2))
    nc.fit(net, [(x, y)], nc.TrainConfig(epochs=30, lr=0.05, optimizer="adam", weight_decay=0.0), progress=False,
           log=lambda _m: None)
    method = SoftWeightSharing(components=5, zero_mixing=0.9, tau=1.0, dataset_size=256, init_std=0.1)
    nc.apply_(net, method)
    before = float(method.regularizers(net)[0](net).detach())
    nc.fit(net, [(x, y)], nc.TrainConfig(epochs=80, lr=0.01, optimizer="adam", weight_decay=0.0),
           regularizers=method.regularizers(net), progress=False, log=lambda _m: None)
    assert float(method.regularizers(net)[0](net).detach()) < before
    report = snap_to_mixture_(net)
    assert set(report) == {"0", "2"}
    for name, layer in (("0", net[0]), ("2", net[2])):
        assert find_transform(layer, Mask) is not None and find_transform(layer, SharedWeights) is not None
        values = torch.unique(layer.weight.detach())
        assert len(values) <= 5  # zero + at most 4 means
        assert report[name]["kept"] < 1.0
    accuracy = nc.evaluate(net, [(x, y)])["accuracy"]
    assert accuracy > 0.9


def test_snapped_model_encodes_to_a_file_bit_for_bit(tmp_path):
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    nc.apply_(net, SoftWeightSharing(components=4, init_std=0.1))
    snap_to_mixture_(net)
    path = tmp_path / "s.nnc"
    write_nnc(path, encode_model(net, {"arch": "custom"}))
    restored = decode_model(read_nnc(path), model=nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)))
    x = torch.randn(5, 6)
    with torch.no_grad():
        assert torch.equal(restored(x), net(x))


def test_likelihood_assignment_keeps_a_weight_the_fixed_zero_mixing_would_prune():
    # w = 0.6, sigma 0.5 each: N(w|1) / N(w|0) = exp(0.4) > 1, but pi_1 / pi_0 = 1e-3 / 0.999 outweighs it.
    def snapped(assign: str) -> float:
        net = nn.Sequential(nn.Linear(1, 1, bias=False))
        with torch.no_grad():
            net[0].weight.fill_(0.6)
        nc.apply_(net, SoftWeightSharing(components=2, zero_mixing=0.999, init_std=0.5))
        with torch.no_grad():
            find_transform(net[0], MixturePrior).means.fill_(1.0)
        snap_to_mixture_(net, assign=assign)
        return float(net[0].weight.detach())

    assert snapped("posterior") == 0.0 and snapped("likelihood") == 1.0
    with pytest.raises(nc.UserError, match="assign"):
        snap_to_mixture_(nn.Sequential(), assign="map")


def test_a_shared_prior_is_one_set_of_parameters_with_its_hyperprior_counted_once():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    nc.apply_(net, SoftWeightSharing(components=3, shared=True, init_std=0.5))
    first, second = find_transform(net[0], MixturePrior), find_transform(net[2], MixturePrior)
    assert first.means is second.means and first.log_precisions is second.log_precisions
    assert len(list(net.parameters())) == 4 + 3  # two weights and biases, one prior's three tensors
    every = torch.cat([net[0].weight.detach().reshape(-1), net[2].weight.detach().reshape(-1)])
    assert first.means.tolist() == pytest.approx([-float(every.abs().max()), float(every.abs().max())])
    flat = complexity(net, (1.0, 0.0), (1.0, 0.0))
    lam = 4.0  # init_std 0.5
    once = (-(2) * math.log(lam) + 2 * lam) + 2 * (-(4) * math.log(lam) + 0.5 * lam)
    assert float((complexity(net, (3.0, 2.0), (5.0, 0.5)) - flat).detach()) == pytest.approx(once, rel=1e-5)
    with pytest.raises(nc.UserError, match="shared"):
        SoftWeightSharing(shared="yes")
    with pytest.raises(ValueError, match="needs dataset_size=N"):
        SoftWeightSharing().regularizers(nn.Linear(2, 2))


def test_the_prior_learns_at_its_own_rates_relative_to_the_weights():
    net = nn.Sequential(nn.Linear(4, 3))
    nc.apply_(net, SoftWeightSharing(components=3))
    opt, _ = make_optimizer(net, nc.TrainConfig(lr=1e-3, optimizer="adam", weight_decay=5e-4))
    prior = find_transform(net[0], MixturePrior)
    group_of = {id(p): g for g in opt.param_groups for p in g["params"]}
    assert (group_of[id(net[0].bias)]["lr"], group_of[id(net[0].bias)]["weight_decay"]) == (1e-3, 5e-4)
    for name, factor in MixturePrior.lr_scales.items():  # no weight decay pulls the prior toward 0
        assert group_of[id(getattr(prior, name))]["lr"] == pytest.approx(1e-3 * factor)
        assert group_of[id(getattr(prior, name))]["weight_decay"] == 0.0


def test_finish_snaps_and_names_methods_that_rebuild_the_snapped_model_from_a_file(tmp_path):
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))
    method = SoftWeightSharing(components=4, init_std=0.1, assign="likelihood")
    nc.apply_(net, method)
    rebuild, figures = method.finish(net)
    assert rebuild == [SoftWeightSharing(components=4, init_std=0.1, assign="likelihood", snapped=True)]
    assert figures["assign"] == "likelihood"
    assert set(figures["snapped"]) == {"0", "2"} and find_transform(net[0], MixturePrior) is None
    with pytest.raises(nc.UserError, match="no layer has a mixture prior"):
        method.finish(net)  # once only
    with pytest.raises(nc.UserError, match="finished form already"):
        rebuild[0].finish(net)
    nc.save_model(net, tmp_path / "s.safetensors", recipe=rebuild, example=torch.randn(2, 6))
    back, _ = nc.load_model(tmp_path / "s.safetensors", model=nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)))
    x = torch.randn(5, 6)
    with torch.no_grad():
        assert torch.equal(back(x), net(x))
    with pytest.raises(nc.UserError, match="assign"):
        SoftWeightSharing(assign="map")
