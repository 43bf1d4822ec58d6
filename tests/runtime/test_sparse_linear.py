import torch
from torch import nn

import nncompress as nc
from nncompress.runtime.sparse import SparseLinear, sparsify_linear_


def test_sparse_linear_matches_dense_and_converts_only_sparse_layers():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    nc.prune_(net, nc.MagnitudePrune(sparsity=0.95, targets=nc.Select(include=("0",))))
    x = torch.randn(8, 64)
    expected = net(x)
    assert sparsify_linear_(net, min_sparsity=0.9) == ["0"]
    assert isinstance(net[0], SparseLinear) and isinstance(net[2], nn.Linear)
    torch.testing.assert_close(net(x), expected, rtol=1e-5, atol=1e-5)
    assert net[0].weight.values().numel() == round(0.05 * 64 * 128)
