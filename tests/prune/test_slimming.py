"""Network slimming (Liu et al. 2017): L1 on BatchNorm scales, global smallest-|gamma| channel pruning."""
import json
import math

import pytest
import torch
from torch import nn

import nncompress as nc
from nncompress.prune.shrink import shrink_
from nncompress.prune.slimming import PAPER_SCHEDULE_LR_SUM, NetworkSlimming, bn_scale_penalty, matched_penalty
from nncompress.validate import UserError

GAMMAS = ([0.9, -0.05, 0.4, 0.01], [0.3, 0.02, -0.6, 0.7, 0.03, 0.8])


def vgg_like():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                        nn.Conv2d(4, 6, 3, padding=1, bias=False), nn.BatchNorm2d(6), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3))
    with torch.no_grad():
        net[1].weight.copy_(torch.tensor(GAMMAS[0]))
        net[4].weight.copy_(torch.tensor(GAMMAS[1]))
        net[1].bias.uniform_(-1, 1)
        net[4].bias.uniform_(-1, 1)
    return net.eval()


X = torch.randn(4, 1, 5, 5)


def test_slimming_prunes_the_smallest_gammas_globally():
    net = vgg_like()
    report = []
    nc.prune_(net, NetworkSlimming(sparsity=0.4), data=[X], report=report)  # 4 of 10 channels
    pruned = [(net[1].weight.detach() == 0).tolist(), (net[4].weight.detach() == 0).tolist()]
    # |gamma| sorted: 0.01, 0.02, 0.03, 0.05 | 0.3 ...: two in each layer, not 40% of each layer
    assert pruned == [[False, True, False, True], [False, True, False, False, True, False]]
    assert report[0]["channels_pruned"] == 4 and report[0]["channels"] == 10
    assert math.isclose(report[0]["threshold"], 0.05, rel_tol=1e-6)
    assert (net[1].bias.detach()[[1, 3]] == 0).all()  # beta is masked with gamma: the channel is zero
    assert (net[0].weight.detach()[[1, 3]] == 0).all()  # and so is the filter producing it


def test_slimming_per_layer_scope():
    net = vgg_like()
    nc.prune_(net, NetworkSlimming(sparsity=0.5, scope="layer"), data=[X])
    assert int((net[1].weight.detach() == 0).sum()) == 2 and int((net[4].weight.detach() == 0).sum()) == 3


def test_l1_penalty_on_scales_value_and_gradient():
    net = vgg_like()
    method = NetworkSlimming(sparsity=0.3, penalty=1e-2)
    (regularizer,) = method.regularizers(net)
    expected = 1e-2 * sum(abs(g) for gs in GAMMAS for g in gs)
    assert math.isclose(float(regularizer(net).detach()), expected, rel_tol=1e-6)
    regularizer(net).backward()
    assert torch.allclose(net[4].weight.grad, 1e-2 * torch.sign(torch.tensor(GAMMAS[1])))
    assert float(bn_scale_penalty(nn.Sequential(nn.Linear(2, 2)), 1.0)) == 0.0


def test_sparsity_training_shrinks_scales_and_slimmed_model_shrinks_exactly():
    net = vgg_like().train()
    x, y = torch.randn(64, 1, 5, 5), torch.randint(0, 3, (64,))
    method = NetworkSlimming(sparsity=0.5, penalty=5e-2)
    before = sum(float(m.weight.detach().abs().sum()) for m in (net[1], net[4]))
    nc.fit(net, [(x, y)] * 20, nc.TrainConfig(epochs=1, lr=0.05, weight_decay=0.0), progress=False,
           regularizers=method.regularizers(net), log=lambda _: None)
    after = sum(float(m.weight.detach().abs().sum()) for m in (net[1], net[4]))
    assert after < before - 0.5  # 20 steps of lr 0.05 x s 0.05 pull the 10 |gamma| down by up to 0.5
    net.eval()
    nc.prune_(net, method, data=[x])
    masked = net(x)
    shrink_(net, x)
    assert net[0].out_channels + net[3].out_channels == 5
    assert torch.allclose(net(x), masked, atol=1e-6)


def test_models_without_batchnorm_are_left_alone_and_bad_fields_refused():
    net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    report = []
    nc.prune_(net, NetworkSlimming(sparsity=0.5), data=[torch.randn(2, 4)], report=report)
    assert report[0]["channels_pruned"] == 0 and not hasattr(net[0], "parametrizations")
    with pytest.raises(UserError, match="penalty"):
        NetworkSlimming(sparsity=0.5, penalty=-1.0)
    with pytest.raises(UserError, match="layer_sparsity"):
        NetworkSlimming(sparsity=0.5, layer_sparsity={"0": 0.1})


@pytest.mark.slow
def test_slim_cli_reports_before_and_after(main, tmp_path, digits):
    from nncompress.zoo import build_model

    torch.manual_seed(0)
    path = nc.save_model(build_model("vgg_small", digits.in_shape, 10), tmp_path / "v.safetensors", arch="vgg_small",
                         in_shape=digits.in_shape, num_classes=10)
    report = tmp_path / "s.json"
    code, stdout, stderr = main("slim", str(path), "--sparsity", "0.5", "--sparsify-epochs", "1", "--finetune-epochs", "0",
                                "--json", str(report), "-o", str(tmp_path / "slim.safetensors"))
    assert code == 0, stderr
    r = json.loads(report.read_text())
    assert r["steps"][0]["channels_pruned"] == 224 and r["steps"][0]["channels"] == 448  # 32+32+64+64+128+128
    assert sum(g["kept"] for g in r["groups"]) == 224 and r["after"]["macs"] < r["before"]["macs"]
    assert "slimmed" in stdout
    assert r["penalty_matched"] and r["method"]["penalty"] == pytest.approx(matched_penalty(
        nc.TrainConfig(epochs=1, lr=0.05, weight_decay=5e-4), -(-len(digits.train_x) // 64)))
    loaded, meta = nc.load_model(tmp_path / "slim.safetensors")  # the shrunk model, at its smaller shapes
    assert meta["shrunk"] and sum(p.numel() for p in loaded.parameters()) == r["after"]["params"]


def test_matched_penalty_moves_gamma_as_far_as_the_papers_schedule():
    from nncompress.train import TrainConfig

    # the paper's lr sum: 160 epochs x 782 steps at 0.1 / 0.01 / 0.001 for 50% / 25% / 25% of the epochs
    assert PAPER_SCHEDULE_LR_SUM == pytest.approx(160 * 782 * (0.05 + 0.0025 + 0.00025))
    constant = TrainConfig(epochs=4, lr=0.05, schedule="constant")
    s = matched_penalty(constant, 125)
    assert s * 4 * 125 * 0.05 == pytest.approx(1e-4 * PAPER_SCHEDULE_LR_SUM)  # same momentum on both sides
    no_momentum = TrainConfig(epochs=4, lr=0.05, schedule="constant", momentum=0.0)
    assert matched_penalty(no_momentum, 125) == pytest.approx(10 * s)  # no 1 / (1 - 0.9) boost
    assert matched_penalty(TrainConfig(epochs=4, lr=0.05), 125) > s  # cosine: smaller lrs, larger s
    with pytest.raises(UserError, match="SGD only"):
        matched_penalty(TrainConfig(epochs=4, lr=1e-3, optimizer="adam"), 125)
