"""Defect classes 5 and 7 (issue 11): recipes with data-dependent shapes reload (the stored
structure is restored, not recomputed), and NaN / Inf / empty weights and empty calibration data are
clear errors naming the layer."""
import pytest
import torch

import nncompress as nc
from nncompress.validate import UserError
from nncompress.zoo import build_model


def few_distinct_values(model: torch.nn.Module) -> torch.nn.Module:
    """Weights with only 7 distinct values per layer: k-means keeps 7 clusters, not 2^bits = 32."""
    with torch.no_grad():
        for layer in (model.fc1, model.fc2, model.fc3):
            layer.weight.copy_(torch.randint(-3, 4, layer.weight.shape).float() / 10)
    return model


@pytest.mark.parametrize("recipe", [[nc.KMeansQuant(bits=5)],
                                    [nc.MagnitudePrune(sparsity=0.8, scope="global"), nc.KMeansQuant(bits=5)]],
                         ids=["kmeans", "global-magnitude-then-kmeans"])
def test_a_kmeans_recipe_reloads_exactly(tmp_path, recipe):
    model = few_distinct_values(build_model("lenet300", (1, 8, 8), 10)).eval()
    for method in recipe:
        nc.apply_(model, method)
    sizes = {n: p.numel() for n, p in model.named_parameters() if n.endswith("codebook")}
    assert min(sizes.values()) < 32  # data-dependent: a fresh model would get 32
    path = nc.save_model(model, tmp_path / "k.safetensors", recipe=recipe, arch="lenet300", in_shape=(1, 8, 8),
                         num_classes=10)
    loaded, _ = nc.load_model(path)
    x = torch.randn(5, 1, 8, 8)
    assert torch.equal(loaded.eval()(x), model(x))
    assert {n: p.numel() for n, p in loaded.named_parameters() if n.endswith("codebook")} == sizes


def test_a_reloaded_codebook_still_trains(tmp_path):
    model = few_distinct_values(build_model("lenet300", (1, 8, 8), 10))
    nc.apply_(model, nc.KMeansQuant(bits=5))
    path = nc.save_model(model, tmp_path / "k.safetensors", recipe=[nc.KMeansQuant(bits=5)], arch="lenet300",
                         in_shape=(1, 8, 8), num_classes=10)
    loaded, _ = nc.load_model(path)
    codebook = loaded.fc1.parametrizations.weight[0].codebook
    loaded(torch.randn(2, 1, 8, 8)).sum().backward()
    assert isinstance(codebook, torch.nn.Parameter) and codebook.grad is not None


def poisoned(value: float) -> torch.nn.Module:
    net = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    with torch.no_grad():
        net[2].weight[0, 3] = value
    return net


@pytest.mark.parametrize("method", [nc.KMeansQuant(bits=2), nc.MagnitudePrune(sparsity=0.5),
                                    nc.MagnitudePrune(sparsity=0.5, scope="global"), nc.ThresholdPrune(quality=1.0)],
                         ids=["kmeans", "magnitude", "global", "threshold"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_naming_the_layer(method, value):
    net = poisoned(value)
    before = net[0].weight.detach().clone()
    with pytest.raises(UserError, match="layer '2' has 1 NaN or infinite weights"):
        nc.apply_(net, method)
    assert torch.equal(net[0].weight, before)  # nothing changed on the healthy layer either


def test_a_zero_size_layer_is_a_clear_error():
    net = torch.nn.Sequential(torch.nn.Linear(8, 0), torch.nn.Linear(0, 2))
    for method in (nc.KMeansQuant(bits=2), nc.MagnitudePrune(sparsity=0.5, scope="global")):
        with pytest.raises(UserError, match="layer '0' has a zero-size weight"):
            nc.apply_(net, method)


def test_empty_calibration_data_is_a_clear_error():
    net = torch.nn.Sequential(torch.nn.Linear(8, 4))
    with pytest.raises(UserError, match="calibration data is empty"):
        nc.quantize_(net, nc.LinearQuant(weight_bits=8, act_bits=8), data=[])
