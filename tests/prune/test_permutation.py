"""Channel permutation for N:M sparsity (Pool & Yu 2021): the network computes the same function and
2:4 keeps at least the identity's magnitude."""
import itertools

import torch
from torch import nn

import nncompress as nc
from nncompress.prune.nm import NMPrune
from nncompress.prune.permutation import (find_producers, kept_magnitude, permute_channels_, permute_for_nm_,
                                          search_permutation)


def brute_force_best(weight, n=2, m=4):
    """The best kept magnitude over every split of 8 channels into two groups of 4 (order inside a
    group does not matter: 35 splits stand for all 8! orders)."""
    channels = set(range(weight.shape[1]))
    return max(kept_magnitude(weight, n, m, torch.tensor([*first, *sorted(channels - set(first))]))
               for first in itertools.combinations(sorted(channels), 4))


def test_lecture_style_example_swap_recovers_the_lost_magnitude():
    # two large weights share a group in every row: the identity must drop one of them, a swap keeps both
    w = torch.tensor([[9.0, 8.0, 7.0, 0.1, 0.2, 0.3, 0.1, 0.2],
                      [8.0, 9.0, 7.0, 0.3, 0.1, 0.2, 0.3, 0.1]])
    perm = search_permutation(w)
    assert abs(kept_magnitude(w, 2, 4) - (9 + 8 + 0.3 + 0.2 + 9 + 8 + 0.3 + 0.2)) < 1e-6
    assert abs(kept_magnitude(w, 2, 4, perm) - (9 + 8 + 7 + 0.3 + 9 + 8 + 7 + 0.3)) < 1e-6
    assert sorted(perm.tolist()) == list(range(8))


def test_search_never_keeps_less_than_identity_and_often_finds_the_optimum():
    optimal = 0
    for seed in range(6):
        torch.manual_seed(seed)
        w = torch.randn(5, 8)
        perm = search_permutation(w)
        got, identity = kept_magnitude(w, 2, 4, perm), kept_magnitude(w, 2, 4)
        assert got >= identity - 1e-12
        best = brute_force_best(w)
        assert got <= best + 1e-9
        optimal += abs(got - best) < 1e-9
    assert optimal >= 3
    torch.manual_seed(0)
    w = torch.randn(64, 128)
    assert kept_magnitude(w, 2, 4, search_permutation(w)) > 1.01 * kept_magnitude(w, 2, 4)


def residual_free_convnet():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(8, 12, 3), nn.ReLU(), nn.Flatten(), nn.Linear(12 * 2 * 2, 16), nn.ReLU(),
                         nn.Dropout(0.1), nn.Linear(16, 4))


def test_permutation_leaves_the_outputs_unchanged_through_batchnorm_and_pooling():
    net = residual_free_convnet()
    net[1].running_mean.uniform_(-1, 1)
    net[1].running_var.uniform_(0.5, 2)
    net.eval()
    x = torch.randn(4, 3, 8, 8)
    before = net(x)
    producers = find_producers(net, ["4", "7", "10"])
    assert producers["4"].name == "0" and producers["4"].norms == ["1"]
    assert producers["7"].block == 4 and producers["10"].name == "7"
    report = permute_for_nm_(net, ["4", "7", "10"])
    torch.testing.assert_close(net(x), before, rtol=1e-5, atol=1e-5)
    for entry in report.values():
        assert entry["permuted"] >= entry["identity"]
    assert report["4"]["permuted"] > report["4"]["identity"] and report["10"]["permuted"] > report["10"]["identity"]
    assert "inside one channel" in report["7"]["reason"]


def test_explicit_permutation_moves_producer_rows_with_consumer_columns():
    net = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))
    x = torch.randn(2, 5)
    before = net(x)
    permute_channels_(net, "2", find_producers(net, ["2"])["2"], torch.tensor([2, 0, 3, 1]))
    torch.testing.assert_close(net(x), before)


def test_nm_prune_with_permutation_keeps_more_and_reports_it():
    torch.manual_seed(3)
    plain, permuted = (nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8)) for _ in range(2))
    permuted.load_state_dict(plain.state_dict())
    x = torch.randn(6, 16)
    ctx = nc.Context()
    nc.run_method(permuted, NMPrune(permute=True), ctx)
    nc.apply_(plain, NMPrune())
    entry = ctx.report[-1]["permutations"]
    assert entry["0"]["reason"] == "its input is the model input"
    assert entry["2"]["permuted"] > entry["2"]["identity"]
    kept = permuted[2].weight.abs().sum().item()
    assert abs(kept - entry["2"]["permuted"]) < 1e-4 and abs(plain[2].weight.abs().sum().item() - entry["2"]["identity"]) < 1e-4
    assert not torch.allclose(permuted(x), plain(x))  # different (better) weights kept


def test_residual_connections_keep_the_identity():
    class Res(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 8)

        def forward(self, x):
            h = self.a(x)
            return self.b(h) + h

    report = permute_for_nm_(Res(), ["b"])
    assert "another node" in report["b"]["reason"] and report["b"]["permuted"] == report["b"]["identity"]
