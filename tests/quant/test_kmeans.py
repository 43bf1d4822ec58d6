import numpy as np
import pytest
import torch
from torch import nn

import nncompress as nc
from nncompress.quant.kmeans import SharedWeights, kmeans_1d

W = torch.tensor([[2.09, -0.98, 1.48, 0.09], [0.05, -0.14, -1.08, 2.12],
                  [-0.91, 1.92, 0.0, -1.03], [1.87, 0.0, 1.53, 1.49]])
SLIDE_INDEX = [[3, 0, 2, 1], [1, 1, 0, 3], [0, 3, 1, 0], [3, 1, 2, 2]]
SLIDE_GRAD = torch.tensor([[-0.03, -0.01, 0.03, 0.02], [-0.01, 0.01, -0.02, 0.12],
                           [-0.01, 0.02, 0.04, 0.01], [-0.07, -0.02, 0.01, -0.02]])


def test_seed_example_clusters_and_reconstruction():
    centroids, idx = kmeans_1d(W, 4)
    np.testing.assert_allclose(centroids, [-1.0, 0.0, 1.5, 2.0], atol=1e-6)
    assert idx.reshape(4, 4).tolist() == SLIDE_INDEX


def test_codebook_gradient_is_the_per_cluster_sum_of_weight_gradients():
    shared = SharedWeights(torch.tensor([-1.0, 0.0, 1.5, 2.0]), torch.tensor(SLIDE_INDEX))
    (shared(W) * SLIDE_GRAD).sum().backward()
    torch.testing.assert_close(shared.codebook.grad, torch.tensor([-0.03, 0.04, 0.02, 0.04]))
    with torch.no_grad():  # one SGD step with lr 1, as on the slide
        shared.codebook -= shared.codebook.grad
    torch.testing.assert_close(shared.codebook.detach(), torch.tensor([-0.97, -0.04, 1.48, 1.96]))


def test_pruned_zeros_stay_zero_and_are_not_clustered():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 32))
    nc.prune_(net, nc.MagnitudePrune(sparsity=0.75))
    zeros = net[0].weight == 0
    nc.quantize_(net, nc.KMeansQuant(bits=3))
    shared = net[0].parametrizations.weight[1]
    assert (shared.indices[zeros] == -1).all() and (shared.indices[~zeros] >= 0).all()
    assert (shared.codebook != 0).all()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    for _ in range(5):
        opt.zero_grad()
        net(torch.randn(16, 64)).square().mean().backward()
        opt.step()
    assert (net[0].weight[zeros] == 0).all()
    assert len(torch.unique(net[0].weight[~zeros])) <= 8


def test_ten_million_weights_cluster_quickly_and_as_well_as_lloyd():
    import time
    x = np.random.default_rng(0).normal(size=2_000_000).astype(np.float32)
    start = time.perf_counter()
    centroids, idx = kmeans_1d(x, 32)
    assert time.perf_counter() - start < 5  # generous bound for a loaded CI machine; the benchmark times it
    assert np.all(np.diff(centroids) > 0)
    # at convergence each centroid is the mean of its cluster and each value sits at its nearest centroid
    for c in (0, 10, 31):
        assert abs(x[idx == c].mean() - centroids[c]) < 1e-2
    sample = x[:1000]
    np.testing.assert_array_equal(idx[:1000], np.abs(sample[:, None] - centroids[None]).argmin(1))


@pytest.mark.parametrize("init", ["linear", "density", "random"])
def test_inits_and_empty_cluster_reseeding(init):
    values = np.array([0.0] * 50 + [0.1] * 5 + [10.0] * 50 + [10.5])  # linear init leaves 2 clusters empty
    centroids, idx = kmeans_1d(values, 4, init=init)
    assert len(np.unique(idx)) == len(centroids) == 4  # no empty cluster survives
    np.testing.assert_allclose(np.sort(centroids), [0.0, 0.1, 10.0, 10.5], atol=1e-6)
    assert len(kmeans_1d(np.array([1.0, 1.0, 2.0]), 8)[0]) == 2  # never more clusters than values


def test_bad_kmeans_input():
    with pytest.raises(ValueError, match="init='lin'"):
        nc.KMeansQuant(init="lin")
    with pytest.raises(ValueError, match="at least one value"):
        kmeans_1d(np.zeros(0), 4)
