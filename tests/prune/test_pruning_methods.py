import copy
from collections import OrderedDict

import pytest
import torch
import yaml
from torch import nn

import nncompress as nc
from nncompress.parametrize import transforms
from nncompress.prune.mask import Mask, keep_mask_of
from nncompress.validate import UserError


def small_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 10))


def test_pruned_weights_stay_zero_through_sgd_with_momentum_and_weight_decay():
    net = small_net()
    weight_param = net[0].weight
    nc.prune_(net, nc.MagnitudePrune(sparsity=0.7))
    assert net[0].parametrizations.weight.original is weight_param  # optimizers keep working
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=0.01)
    x, y = torch.randn(64, 20), torch.randint(0, 10, (64,))
    for _ in range(20):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    for layer in (net[0], net[2]):
        pruned = ~keep_mask_of(layer)
        assert int(pruned.sum()) == round(0.7 * layer.weight.numel())
        assert (layer.weight[pruned] == 0).all()
        assert (layer.parametrizations.weight.original[pruned] == 0).all()


def test_squash_keeps_outputs_and_gives_plain_layers():
    net = nc.prune_(small_net(), nc.MagnitudePrune(sparsity=0.5, scope="global"))
    x = torch.randn(5, 20)
    before = net(x)
    nc.squash_(net)
    assert type(net[0]) is nn.Linear and set(net.state_dict()) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    assert torch.equal(net(x), before)


def test_repruning_reuses_the_mask_and_only_grows_it():
    net = small_net()
    nc.prune_(net, nc.MagnitudePrune(sparsity=0.5))
    first = keep_mask_of(net[0]).clone()
    nc.prune_(net, nc.MagnitudePrune(sparsity=0.8))
    masks = [t for t in net[0].parametrizations.weight if isinstance(t, Mask)]
    assert len(masks) == 1
    assert not (keep_mask_of(net[0]) & ~first).any()


def test_exclude_and_layer_overrides():
    net = small_net()
    nc.prune_(net, nc.MagnitudePrune(sparsity=0.5, layer_sparsity={"2": 0.1}, targets=nc.Select(exclude=())))
    assert int((net[2].weight == 0).sum()) == 30
    net = small_net()
    nc.prune_(net, nc.MagnitudePrune(sparsity=0.5, targets=nc.Select(exclude=("0",))))
    assert int((net[0].weight == 0).sum()) == 0 and int((net[2].weight == 0).sum()) == 150


def test_random_pruning_is_seeded_and_differs_from_magnitude():
    a = nc.prune_(small_net(), nc.RandomPrune(sparsity=0.5, seed=3))
    b = nc.prune_(small_net(), nc.RandomPrune(sparsity=0.5, seed=3))
    c = nc.prune_(small_net(), nc.MagnitudePrune(sparsity=0.5))
    assert torch.equal(keep_mask_of(a[0]), keep_mask_of(b[0]))
    assert not torch.equal(keep_mask_of(a[0]), keep_mask_of(c[0]))


@pytest.mark.parametrize("kwargs,match", [
    ({"sparsity": 1.0}, r"sparsity=1.0 is outside the allowed range \[0, 1\)"),
    ({"sparsity": -0.1}, "sparsity=-0.1"),
    ({"sparsity": 0.5, "scope": "globl"}, "Did you mean 'global'"),
    ({"sparsity": 0.5, "layer_sparsity": {"0": 2.0}}, r"layer_sparsity\['0'\]=2.0"),
])
def test_bad_hyperparameters_are_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        nc.MagnitudePrune(**kwargs)


def test_unknown_layer_name_suggests():
    with pytest.raises(ValueError, match="layer 'fc' is not in the model"):
        nc.prune_(small_net(), nc.MagnitudePrune(sparsity=0.5, targets=nc.Select(include=("fc",))))


def test_yaml_round_trip_and_unknown_fields():
    method = nc.MagnitudePrune(sparsity=0.9, scope="global", targets=nc.Select(exclude=("conv1",)))
    again = nc.method_from_dict(yaml.safe_load(yaml.safe_dump(method.to_dict())))
    assert again == method
    with pytest.raises(ValueError, match="has no field 'sparsty'.*Did you mean 'sparsity'"):
        nc.method_from_dict({"method": "magnitude", "sparsty": 0.5})
    with pytest.raises(ValueError, match="unknown method 'magnitud'.*Did you mean 'magnitude'"):
        nc.method_from_dict({"method": "magnitud"})


def test_deepcopy_and_state_dict_reload_reproduce_outputs():
    net = nc.prune_(small_net(), nc.MagnitudePrune(sparsity=0.6))
    twin = nc.prune_(small_net(), nc.MagnitudePrune(sparsity=0.1))
    twin.load_state_dict(net.state_dict())
    x = torch.randn(3, 20)
    assert torch.equal(twin(x), net(x)) and torch.equal(copy.deepcopy(net)(x), net(x))


def named_net():
    torch.manual_seed(0)
    return nn.Sequential(OrderedDict(fc1=nn.Linear(20, 30), relu1=nn.ReLU(), fc2=nn.Linear(30, 20), relu2=nn.ReLU(),
                                     fc3=nn.Linear(20, 10)))


def test_global_scope_keeps_per_layer_overrides_and_one_threshold_for_the_rest():
    net = nc.prune_(named_net(), nc.MagnitudePrune(sparsity=0.5, scope="global", layer_sparsity={"fc3": 0.1}))
    pruned = {name: int((~keep_mask_of(getattr(net, name))).sum()) for name in ("fc1", "fc2", "fc3")}
    assert pruned["fc3"] == 20  # its own 10% of 200, not the global threshold
    assert pruned["fc1"] + pruned["fc2"] == 600  # 50% of the 600 + 600 non-overridden weights
    scores = {n: getattr(named_net(), n).weight.detach().abs() for n in ("fc1", "fc2")}  # before pruning
    masks = {n: keep_mask_of(getattr(net, n)) for n in scores}
    largest_removed = max(float(scores[n][~masks[n]].max()) for n in scores)
    smallest_kept = min(float(scores[n][masks[n]].min()) for n in scores)
    assert largest_removed <= smallest_kept  # one threshold shared by fc1 and fc2


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_override_patterns_work_in_both_scopes(scope):
    net = nc.prune_(named_net(), nc.MagnitudePrune(sparsity=0.5, scope=scope, layer_sparsity={"re:fc[23]": 0.25}))
    assert int((~keep_mask_of(net.fc2)).sum()) == 150 and int((~keep_mask_of(net.fc3)).sum()) == 50
    assert int((~keep_mask_of(net.fc1)).sum()) == 300


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_unknown_or_untargeted_override_names_are_user_errors(scope):
    with pytest.raises(UserError, match="layer_sparsity key 'fc_2' matches none of the targeted layers. "
                                        "Did you mean 'fc2'"):
        nc.prune_(named_net(), nc.MagnitudePrune(sparsity=0.5, scope=scope, layer_sparsity={"fc_2": 0.2}))
    excluded = nc.MagnitudePrune(sparsity=0.5, scope=scope, layer_sparsity={"fc1": 0.2},
                                 targets=nc.Select(exclude=("fc1",)))
    net = named_net()
    with pytest.raises(UserError, match="'fc1' matches none of the targeted layers.*Layers: fc2, fc3"):
        nc.prune_(net, excluded)
    assert not any(transforms(m) for m in net.modules())  # refused before any layer changed
