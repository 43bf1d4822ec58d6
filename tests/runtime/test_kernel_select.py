"""Per-layer dense / sparse kernel selection: same outputs, and the choice follows the measurement."""
import pytest
import torch
from torch import nn

import nncompress as nc
from nncompress.runtime.kernel_select import use_sparse_kernels_
from nncompress.runtime.sparse import SparseConv2d, SparseLinear


def pruned_net():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, stride=2), nn.ReLU(), nn.Conv2d(8, 4, 3, groups=2),
                        nn.Flatten(), nn.Linear(4 * 3 * 3, 32), nn.ReLU(), nn.Linear(32, 5))
    nc.prune_(net, nc.MagnitudePrune(sparsity=0.9, targets=nc.Select(exclude=("6",))))
    return net.eval()


def test_sparse_conv_matches_dense_conv():
    torch.manual_seed(1)
    conv = nn.Conv2d(4, 6, (3, 2), stride=(2, 1), padding=(1, 2), dilation=(1, 2))
    with torch.no_grad():
        conv.weight.mul_(torch.rand_like(conv.weight) > 0.7)
    x = torch.randn(3, 4, 9, 7)
    torch.testing.assert_close(SparseConv2d.from_dense(conv)(x), conv(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="groups=1"):
        SparseConv2d.from_dense(nn.Conv2d(4, 4, 3, groups=2))


def test_forced_sparse_choice_keeps_the_outputs():
    net = pruned_net()
    x = torch.randn(4, 3, 10, 10)
    expected = net(x)
    rows = use_sparse_kernels_(net, x, min_speedup=0.0, rounds=1)
    by_name = {r.name: r for r in rows}
    assert [r.name for r in rows] == ["0", "2", "4", "6"]
    assert by_name["0"].choice == "sparse" and isinstance(net[0], SparseConv2d)
    assert by_name["4"].choice == "sparse" and isinstance(net[4], SparseLinear)
    assert by_name["2"].choice == "dense" and "grouped" in by_name["2"].reason  # groups=2 stays dense
    assert by_name["6"].choice == "dense" and by_name["6"].dense_ms is None and "max_density" in by_name["6"].reason
    assert abs(by_name["4"].density - 0.1) < 0.02 and by_name["0"].dense_ms > 0 and by_name["0"].sparse_ms > 0
    torch.testing.assert_close(net(x), expected, rtol=1e-5, atol=1e-5)


def test_choice_follows_the_threshold():
    net = pruned_net()
    x = torch.randn(2, 3, 10, 10)
    rows = use_sparse_kernels_(net, (x, None), min_speedup=float("inf"), rounds=1)
    assert all(r.choice == "dense" for r in rows) and not any(isinstance(m, (SparseLinear, SparseConv2d)) for m in net)


def test_a_very_sparse_big_layer_is_run_sparse():
    torch.manual_seed(2)
    net = nn.Sequential(nn.Linear(1024, 1024))
    nc.prune_(net, nc.MagnitudePrune(sparsity=0.995))
    x = torch.randn(64, 1024)
    expected = net(x)
    rows = use_sparse_kernels_(net, x, rounds=3)
    assert rows[0].choice == "sparse" and rows[0].speedup > 1.1  # about 10x on 2 cores; the test only needs > 1.1
    torch.testing.assert_close(net(x), expected, rtol=1e-4, atol=1e-4)


def test_bad_arguments_are_clear_errors():
    with pytest.raises(nc.UserError, match="min_speedup=-1"):
        use_sparse_kernels_(pruned_net(), torch.randn(1, 3, 10, 10), min_speedup=-1)


def test_a_converted_model_runs_its_decoded_weights_sparse():
    net = pruned_net()
    nc.convert_(net)
    x = torch.randn(2, 3, 10, 10)
    expected = net(x)
    rows = use_sparse_kernels_(net, x, min_speedup=0.0, rounds=1)
    assert {r.name for r in rows if r.choice == "sparse"} == {"0", "4"}
    torch.testing.assert_close(net(x), expected, rtol=1e-5, atol=1e-5)


def test_a_layer_with_an_input_quantizer_stays_dense():
    """The sparse modules have no activation quantizer: swapping one in would silently drop it."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4))
    nc.prune_(net, nc.MagnitudePrune(sparsity=0.9))
    x = torch.randn(32, 64) * 5
    nc.quantize_(net, nc.LinearQuant(weight_bits=8, act_bits=2), data=[x])
    net.eval()
    expected = net(x)
    rows = use_sparse_kernels_(net, x, min_speedup=0.0, rounds=1)
    assert all(r.choice == "dense" and "quantizes its input" in r.reason for r in rows)
    torch.testing.assert_close(net(x), expected, rtol=0, atol=0)
