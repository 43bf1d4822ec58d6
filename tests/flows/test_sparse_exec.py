"""Sparse execution wired in: a pruned model picks its kernels per layer and is timed end to end
(no timing is asserted: only that the figures are there and the outputs are unchanged)."""
import json

import torch
from torch import nn

import nncompress as nc
from nncompress.flows.sparse_exec import sparse_execution
from nncompress.runtime.sparse import SparseConv2d, SparseLinear


def pruned_net() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 64), nn.ReLU(),
                        nn.Linear(64, 10))
    return nc.apply_(net, nc.MagnitudePrune(sparsity=0.9))


def test_forced_sparse_kernels_keep_the_outputs_and_report_the_speedup():
    net, x = pruned_net(), torch.randn(4, 1, 8, 8)
    selected, r = sparse_execution(net, x, threads=1, rounds=2, layer_rounds=1, min_speedup=0.0)
    assert isinstance(selected[0], SparseConv2d) and isinstance(selected[3], SparseLinear)
    assert r["sparse_layers"] == 3 and [row["choice"] for row in r["layers"]] == ["sparse"] * 3
    torch.testing.assert_close(selected(x), net(x), rtol=1e-4, atol=1e-5)
    assert r["speedup"] > 0 and r["speedup_min"] <= r["speedup"] <= r["speedup_max"]
    assert hasattr(net[0], "parametrizations")  # the caller's model is left as it was


def test_cli_sparse_kernels_writes_json(main, tmp_path, digits):
    torch.manual_seed(0)
    from nncompress.zoo import build_model

    net = build_model("lenet300", digits.in_shape, digits.num_classes)
    nc.apply_(net, nc.MagnitudePrune(sparsity=0.95))
    path = nc.save_model(net, tmp_path / "p.safetensors", recipe=[nc.MagnitudePrune(sparsity=0.95)], arch="lenet300",
                         in_shape=digits.in_shape, num_classes=digits.num_classes)
    report = tmp_path / "k.json"
    code, stdout, stderr = main("sparse-kernels", str(path), "--batch", "8", "--threads", "1", "--rounds", "2",
                                "--min-speedup", "0", "--json", str(report))
    assert code == 0, stderr
    r = json.loads(report.read_text())
    assert r["batch"] == 8 and r["sparse_layers"] == 3 and [row["name"] for row in r["layers"]] == ["fc1", "fc2", "fc3"]
    assert "end to end" in stdout
    code, _, stderr = main("sparse-kernels", str(path), "--max-density", "1.5")
    assert code == 2 and "max_density" in stderr
