"""Han 2015's per-layer table: activations measured with hooks, FLOP% = Weights% x previous Act%."""
import pytest
import torch
from torch import nn

import nncompress as nc
from nncompress.analysis.layer_table import LayerTableRow, _total, activation_density, format_table, han_table


def chain():
    net = nn.Sequential(nn.Linear(4, 4, bias=False), nn.ReLU(), nn.Linear(4, 2, bias=False), nn.ReLU(),
                        nn.Linear(2, 3, bias=False))
    with torch.no_grad():
        net[0].weight.copy_(torch.diag(torch.tensor([1.0, -1.0, 1.0, 0.0])))  # 4 inputs -> 2 of 4 positive
        net[2].weight.copy_(torch.tensor([[1.0, 0, 0, 0], [-1.0, 0, 0, 0]]))  # -> 1 of 2 positive
        net[4].weight.copy_(torch.tensor([[1.0, 0], [0, 0], [1.0, 1.0]]))
    return net


def test_activation_density_is_measured_on_the_data():
    x = torch.ones(5, 4)
    order, density, out = activation_density(chain(), [(x, None), (x, None)])
    assert order == ["0", "2", "4"]
    assert density == {"0": 1.0, "2": 0.5, "4": 0.5}
    assert out == pytest.approx(2 / 3)


def test_table_columns_follow_han():
    x = torch.ones(5, 4)
    rows = han_table(chain(), [(x, torch.zeros(5))])
    r0, r1, r2, total = rows
    assert [r.name for r in rows] == ["0", "2", "4", "total"]
    assert (r0.weights, r0.flops, r1.flops, r2.flops) == (16, 32, 16, 12)  # FLOP = 2 x MACs
    assert (r0.act_nonzero, r1.act_nonzero, r2.act_nonzero) == (0.5, 0.5, pytest.approx(2 / 3))
    assert (r0.weights_kept, r1.weights_kept, r2.weights_kept) == (3 / 16, 2 / 8, 3 / 6)
    assert r0.flops_kept == 3 / 16  # the first layer's input counts as dense
    assert r1.flops_kept == 2 / 8 * 0.5 and r2.flops_kept == 3 / 6 * 0.5
    assert total.weights_kept == 8 / 30
    assert total.flops_kept == pytest.approx((32 * 3 / 16 + 16 * 0.125 + 12 * 0.25) / 60)
    assert total.act_nonzero == pytest.approx((4 * 0.5 + 2 * 0.5 + 3 * 2 / 3) / 9)
    assert format_table(rows)[0] == ["0", "0.0K", "0.0K", "50%", "18.8%", "18.8%"]


def test_total_reproduces_han_lenet300_act_and_flop_columns():
    # Han 2015 Table 2 (seed 003): fc1 38% / 8%, fc2 65% / 9%, fc3 100% / 26%
    rows = [LayerTableRow("fc1", 235_200, 470_400, 0.38, 300, 0.08, 0.08),
            LayerTableRow("fc2", 30_000, 60_000, 0.65, 100, 0.09, 0.09 * 0.38),
            LayerTableRow("fc3", 1_000, 2_000, 1.00, 10, 0.26, 0.26 * 0.65)]
    total = _total(rows)
    assert round(100 * rows[1].flops_kept) == 3 and round(100 * rows[2].flops_kept) == 17  # Han: 4%, 17%
    assert round(100 * total.act_nonzero) == 46 and round(100 * total.weights_kept) == 8  # Han: 46%, 8%
    assert round(100 * total.flops_kept) == 8  # Han: 8%


def test_pruned_zoo_model_rows():
    torch.manual_seed(0)
    from nncompress.zoo import build_model
    net = build_model("lenet5", (1, 28, 28), 10)
    nc.prune_(net, nc.MagnitudePrune(sparsity=0.8))
    rows = han_table(net, [torch.rand(8, 1, 28, 28)])
    assert [r.name for r in rows] == ["conv1", "conv2", "fc1", "fc2", "total"]
    assert rows[0].flops == 2 * 20 * 24 * 24 * 25 and rows[1].activations == 50 * 8 * 8
    assert all(abs(r.weights_kept - 0.2) < 0.01 for r in rows)
    assert all(0 < r.act_nonzero <= 1 for r in rows)
