import math

import pytest
import torch
from torch import nn

from nncompress.analysis.metrics import (bit_operations, cosine_similarity, count_nonzero, count_params,
                                         layer_stats, model_size_bits, sqnr_db)


def test_sqnr_matches_the_definition():
    w = torch.tensor([3.0, 4.0])
    w_hat = torch.tensor([3.0, 3.0])  # signal 25, noise 1
    assert sqnr_db(w, w_hat) == pytest.approx(10 * math.log10(25))
    assert sqnr_db(w, w) == math.inf


def test_sqnr_of_8bit_rounding_is_about_6db_per_bit():
    w = torch.randn(100_000)
    scale = w.abs().max() / 127
    assert 38 < sqnr_db(w, torch.round(w / scale) * scale) < 44


def test_cosine_similarity():
    a = torch.tensor([1.0, 0.0])
    assert cosine_similarity(a, torch.tensor([0.0, 2.0])) == pytest.approx(0.0)
    assert cosine_similarity(a, 3 * a) == pytest.approx(1.0)
    assert cosine_similarity(torch.zeros(2), torch.zeros(2)) == 1.0


def test_size_bops_and_nonzeros():
    net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    with torch.no_grad():
        net[0].weight[0].zero_()
    assert count_params(net) == 4 * 3 + 3 + 3 * 2 + 2
    assert count_nonzero(net) == count_params(net) - 4
    assert model_size_bits(net, {"0": 8, "2": 4}) == 12 * 8 + 6 * 4 + (3 + 2) * 32
    assert bit_operations({"0": 12, "2": 6}, {"0": 8, "2": 4}, 8) == 12 * 64 + 6 * 32
    rows = layer_stats(net, (4,))
    assert [(r.name, r.macs, r.nonzero) for r in rows] == [("0", 12, 8), ("2", 6, 6)]
    assert rows[0].density == pytest.approx(8 / 12)


def test_parametrized_weights_count_once():
    import nncompress as nc

    net = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2))
    before = count_params(net)
    nc.prune_(net, nc.MagnitudePrune(sparsity=0.5))
    assert count_params(net) == before == 8 * 4 + 4 + 4 * 2 + 2
    assert count_nonzero(net) == before - 16 - 4


def test_layer_stats_of_compressed_models_keep_macs_and_report_stored_bits():
    import nncompress as nc
    from nncompress.zoo import build_model

    torch.manual_seed(0)
    dense = build_model("lenet5", (1, 28, 28), 10)
    expected_macs = [row.macs for row in layer_stats(dense, (1, 28, 28))]
    calib = [(torch.rand(8, 1, 28, 28), None)]
    quant = nc.quantize_(build_model("lenet5", (1, 28, 28), 10),
                         nc.LinearQuant(weight_bits=4, act_bits=8, layer_bits={"conv1": 8}), data=calib)
    rows = layer_stats(quant, (1, 28, 28))
    assert [r.macs for r in rows] == expected_macs and sum(expected_macs) == 2_293_000  # hooks fire inside wrappers
    assert [r.bits for r in rows] == [8, 4, 4, 4]
    shared = nc.apply_(build_model("lenet5", (1, 28, 28), 10), nc.KMeansQuant(bits=5))
    assert [r.bits for r in layer_stats(shared, (1, 28, 28))] == [5, 5, 5, 5]
    assert [r.bits for r in layer_stats(dense, (1, 28, 28))] == [32, 32, 32, 32]
