"""One suite run over every registered Method: adding a method adds one line to METHOD_EXAMPLES."""
import copy

import pytest
import torch
import yaml
from torch import nn

import nncompress as nc
from nncompress.parametrize import transforms
from nncompress.quant.floating import FormatQuant
from nncompress.quant.fp8_training import FP8Training
from nncompress.quant.mixed_precision import NIPQ, DiffQ
from nncompress.quant.binary import BNN, BWN, BinaryConnect, XNORNet
from nncompress.quant.lqnet import LQNet
from nncompress.quant.lsq import LSQ
from nncompress.quant.pact import PACT
from nncompress.quant.qat import STEQuant
from nncompress.quant.ternary import TTQ, TWN
from nncompress.prune.group_lasso import GroupLassoPrune
from nncompress.prune.slimming import NetworkSlimming
from nncompress.prune.structured import ChannelPrune, ColumnPrune, InputChannelPrune
from nncompress.prune.nm import NMPrune
from nncompress.quant.soft_sharing import SoftWeightSharing
from nncompress.registry import METHODS

METHOD_EXAMPLES = [
    SoftWeightSharing(components=5, zero_mixing=0.9, init_std=0.1),
    nc.EntropyPenalized(rate_weight=1e-3, init_bits=5, filters=(3,)),  # issue 16: entropy-coded training
    nc.MinimalRandomCode(total_bits=2000, block_bits=6, train_size=100),  # issue 16: MIRACLE
    nc.MagnitudePrune(sparsity=0.6),
    nc.MagnitudePrune(sparsity=0.7, scope="global", targets=nc.Select(exclude=("0",))),
    nc.RandomPrune(sparsity=0.5, seed=1),
    nc.ThresholdPrune(quality=0.5),
    nc.LinearQuant(weight_bits=4, act_bits=8, observer="mse"),
    nc.LinearQuant(weight_bits=6, act_bits=None, granularity="group", group_size=4),
    nc.DynamicQuant(weight_bits=8, per_token=True),
    nc.SmoothQuant(alpha=0.5, act_bits=8),
    nc.KMeansQuant(bits=3, layer_bits={"type:Conv1d|Conv2d": 4}),
    FormatQuant(weight_format="fp4_e2m1", act_format="fp8_e4m3"),
    ChannelPrune(sparsity=0.5, norm="l1"),  # issue 12 A: structured pruning
    InputChannelPrune(sparsity=0.25),
    ColumnPrune(threshold=0.5),
    GroupLassoPrune(sparsity=0.3, lam=1e-3, theta=0.5),
    NetworkSlimming(sparsity=0.4),
    DiffQ(size_weight=0.05, init_bits=6.0, min_bits=2, max_bits=8),
    NIPQ(target_bits=5.0, candidates=(4, 8), init_bits=7.0),
    FP8Training(weight_scaling="channel", amax_history=4),
    BinaryConnect(stochastic=True, seed=3),  # issue 14: binary and ternary networks
    BNN(),
    BWN(),
    XNORNet(keep_first_last=False),
    TWN(),
    TTQ(threshold=0.05),
    LQNet(weight_bits=2, act_bits=2),
    STEQuant(weight_bits=4, act_bits=4),  # issue 13 A: QAT
    PACT(weight_bits=4, act_bits=3, alpha_decay=1e-4),
    LSQ(weight_bits=3, act_bits=4, granularity="tensor", layer_bits={"type:Conv1d|Conv2d": 8}),
    NMPrune(n=2, m=4, permute=True, targets=nc.Select(types=("Linear",))),  # issue 12 B: 2:4 (+ permutation)
]


def test_every_registered_method_has_an_example():
    assert {type(m) for m in METHOD_EXAMPLES} == set(METHODS.values())


def models():
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(36, 24), nn.ReLU(), nn.Linear(24, 5))
    cnn = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 5))
    conv1d = nn.Sequential(nn.Flatten(2), nn.Conv1d(1, 3, 5, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 16, 5))
    return {"mlp": mlp, "cnn": cnn, "conv1d": conv1d}


X = torch.randn(16, 1, 6, 6)
CALIB = [(X[:8], None), (X[8:], None)]


def applied(method, model):
    return nc.apply_(model, method, data=CALIB)


@pytest.mark.parametrize("method", METHOD_EXAMPLES, ids=lambda m: repr(m.to_dict()))
def test_yaml_round_trip(method):
    assert nc.method_from_dict(yaml.safe_load(yaml.safe_dump(method.to_dict()))) == method


@pytest.mark.parametrize("kind", ["mlp", "cnn", "conv1d"])
@pytest.mark.parametrize("method", METHOD_EXAMPLES, ids=lambda m: repr(m.to_dict()))
def test_method_contract(method, kind):
    if isinstance(method, nc.SmoothQuant) and kind != "mlp":
        pytest.skip("SmoothQuant targets Linear layers; the convnets' Linear is covered by the MLP case")
    model = models()[kind]
    param_ids = {id(p) for p in model.parameters()}
    out = applied(method, model)(X)
    assert out.shape == (16, 5)
    assert param_ids <= {id(p) for p in model.parameters()}  # the same tensors train on (codebooks may be added)

    out.square().sum().backward()  # trains through masks and STE
    for module in model.modules():
        for t in transforms(module):
            original = module.parametrizations.weight.original
            own = list(t.parameters())  # e.g. a shared-weight codebook trains instead of the weight
            assert original.grad is not None or all(p.grad is not None for p in own) and own
            if hasattr(t, "mask"):
                assert (original.grad[~t.mask] == 0).all()

    twin = applied(method, models()[kind])  # same config on a fresh model, then load the state
    twin.load_state_dict(model.state_dict())
    assert torch.equal(twin(X), model(X))
    assert torch.equal(copy.deepcopy(model)(X), model(X))

    for module in model.modules():  # encode -> decode reproduces what the model computes with
        value = module.parametrizations.weight.original if transforms(module) else None
        for t in transforms(module):
            assert torch.equal(t.decode(t.encode(value)), t(value))
            value = t(value)

    before = model(X)
    nc.squash_(model)
    assert torch.equal(model(X), before)
    assert not any(transforms(m) for m in model.modules())


@pytest.mark.parametrize("method", METHOD_EXAMPLES, ids=lambda m: f"{m.name}")
def test_every_registered_method_is_reachable_from_a_recipe(method):
    """issue 15: a YAML recipe reaches every registered method by name with its fields (a prune
    stage for nncompress.prune methods, a quantize stage for the others), through method_from_dict."""
    from nncompress.recipes import recipe_from_text

    kind = "prune" if type(method).__module__.startswith("nncompress.prune") else "quantize"
    spec = method.to_dict()
    stage = {"method": spec.pop("method"), "fields": spec}
    if method.trains_before_finish:  # e.g. soft weight-sharing: its stage must train before the snap
        stage["finetune_epochs"] = 1
    text = yaml.safe_dump({"model": "lenet300", "stages": [{kind: stage}]})
    assert recipe_from_text(text).methods() == [method]
