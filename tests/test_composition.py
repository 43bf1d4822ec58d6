"""Methods compose: every ordered pair of registered methods, on an MLP, a residual + BatchNorm
convnet and a transformer encoder, either builds, runs, trains one step, saves and reloads to the
same outputs, or is refused with a CompositionError that names the layer and leaves the model as
it was. Layers keep their user-facing names whatever is attached."""
import copy

import pytest
import torch
from torch import nn

import nncompress as nc
from nncompress.parametrize import CompositionError
from nncompress.quant.activation import input_quantizer
from test_conformance import METHOD_EXAMPLES

ONE_PER_METHOD = list({type(m): m for m in reversed(METHOD_EXAMPLES)}.values())


class ResidualBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.conv_a, self.bn_a = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.conv_b, self.bn_b = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 5)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.bn_b(self.conv_b(torch.relu(self.bn_a(self.conv_a(x))))))
        return self.head(x.mean((2, 3)))


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        return self.head(self.encoder(x).mean(1))


def make(kind):
    torch.manual_seed(0)
    if kind == "mlp":
        return nn.Sequential(nn.Flatten(), nn.Linear(36, 24), nn.ReLU(), nn.Linear(24, 5))
    return ResidualBN() if kind == "resbn" else Encoder()


def inputs(kind, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(16, 5, 16, generator=g) if kind == "encoder" else torch.randn(16, 1, 6, 6, generator=g)


def apply_all(model, methods, kind, seed):
    x = inputs(kind, seed)
    for method in methods:
        nc.apply_(model, method, data=[(x[:8], None), (x[8:], None)])
    return model


def state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("kind", ["mlp", "resbn", "encoder"])
@pytest.mark.parametrize("second", ONE_PER_METHOD, ids=lambda m: m.name)
@pytest.mark.parametrize("first", ONE_PER_METHOD, ids=lambda m: m.name)
def test_every_pair_composes_or_is_refused_cleanly(first, second, kind, tmp_path):
    model = apply_all(make(kind), [first], kind, seed=1)
    before, structure = state(model), repr(model)
    try:
        apply_all(model, [second], kind, seed=1)
    except CompositionError as err:
        names = [n for n, _ in model.named_modules() if n]
        assert any(f"{n}.weight " in str(err) or f"{n}.bias " in str(err) or str(err).startswith(f"{n}: ")
                   for n in names), f"the error does not name the layer: {err}"
        assert repr(model) == structure and all(torch.equal(v, before[k]) for k, v in state(model).items())
        return
    x = inputs(kind, seed=2)
    model.train()
    out = model(x)
    assert out.shape == (16, 5) and torch.isfinite(out).all()
    trainable = [p for p in model.parameters() if p.requires_grad]
    snapshot = [p.detach().clone() for p in trainable]
    out.square().mean().backward()
    torch.optim.SGD(trainable, lr=0.1).step()
    assert any(not torch.equal(p, s) for p, s in zip(trainable, snapshot, strict=True))

    model.eval()
    path = nc.save_model(model, tmp_path / "m.safetensors", recipe=[first, second])
    twin, _ = nc.load_model(path, lambda: make(kind), example=inputs(kind, seed=3))  # replayed on other data
    twin.eval()
    assert torch.equal(twin(x), model(x))
    assert torch.equal(copy.deepcopy(model)(x), model(x))
    nc.convert_(model)  # ... and the stored integer form reloads too
    path = nc.save_model(model, tmp_path / "c.safetensors", recipe=[first, second])
    converted, _ = nc.load_model(path, lambda: make(kind), example=inputs(kind, seed=4))
    assert torch.equal(converted.eval()(x), model(x))


def test_layers_keep_their_names_and_keys():
    model = make("mlp")
    names = [n for n, _ in model.named_modules()]
    nc.prune_(model, nc.MagnitudePrune(sparsity=0.5))
    nc.quantize_(model, nc.LinearQuant(weight_bits=8, act_bits=8), data=[inputs("mlp", 0)])
    assert [n for n, _ in model.named_modules() if "." not in n] == names  # no wrapper, no `.layer`
    assert {"1.parametrizations.weight.original", "1.input_quantizer.scale"} <= set(model.state_dict())
    assert nc.Select().layers(model).keys() == {"1", "3"}  # the quantizer child is not a layer


def test_applying_a_quantizer_twice_fails_clearly_and_changes_nothing():
    model = make("mlp")
    data = [inputs("mlp", 0)]
    nc.quantize_(model, nc.LinearQuant(weight_bits=8, act_bits=8), data=data)
    before = state(model)
    with pytest.raises(CompositionError, match=r"1\.weight is already quantized.*remove_quantization_"):
        nc.quantize_(model, nc.LinearQuant(weight_bits=4, act_bits=8), data=data)
    assert all(torch.equal(v, before[k]) for k, v in state(model).items())
    nc.remove_quantization_(model)  # ... and after removing, re-quantizing works
    nc.quantize_(model, nc.LinearQuant(weight_bits=4, act_bits=8), data=data)
    assert model[1].parametrizations.weight[0].spec.bits == 4


def test_smoothquant_on_the_ffn_and_linearquant_on_the_rest():
    model = make("encoder").eval()
    x = inputs("encoder", 0)
    reference = model(x)
    ffn = ("encoder.linear1", "encoder.linear2")
    nc.quantize_(model, nc.SmoothQuant(targets=nc.Select(types=("Linear",), include=ffn)), data=[x])
    nc.quantize_(model, nc.LinearQuant(targets=nc.Select(exclude=ffn)), data=[x])
    smoothed = {n for n, m in model.named_modules() if input_quantizer(m) is not None and m.input_quantizer.smooth is not None}
    plain = {n for n, m in model.named_modules() if input_quantizer(m) is not None and m.input_quantizer.smooth is None}
    assert smoothed == set(ffn)
    assert plain == {"encoder.self_attn.q_proj", "encoder.self_attn.k_proj", "encoder.self_attn.v_proj",
                     "encoder.self_attn.out_proj", "head"}
    assert nc.analysis.metrics.sqnr_db(reference, model(x)) > 25


def test_prune_after_quantize_is_refused_before_zeroing_any_weight():
    model = make("mlp")
    nc.quantize_(model, nc.LinearQuant(weight_bits=8, act_bits=None))
    before = state(model)
    with pytest.raises(CompositionError, match="prune before quantizing"):
        nc.prune_(model, nc.MagnitudePrune(sparsity=0.5))
    assert all(torch.equal(v, before[k]) for k, v in state(model).items())


def test_a_new_transform_on_a_deep_copy_leaves_the_original_alone():
    """torch puts each parametrized tensor's property on the module's class, which a deep copy shares:
    quantizing a pruned copy's bias must not give the original a `bias` it cannot compute, and
    converting or detaching a copy must not take the original's `weight` away."""
    from nncompress.encode.deep_compression import quantize_biases_
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 4))
    nc.apply_(model, nc.MagnitudePrune(sparsity=0.5))
    bias = model[0].bias.detach().clone()
    twin = copy.deepcopy(model)
    quantize_biases_(twin, 4)
    assert torch.equal(model[0].bias, bias) and not torch.equal(twin[0].bias, bias)
    x = torch.randn(3, 6)
    model(x), twin(x)
    assert type(nc.squash_(twin)[0]) is nn.Linear and type(model[0]).__name__ == "ParametrizedLinear"
    nc.apply_(model, nc.KMeansQuant(bits=2))
    expected = model(x)
    nc.convert_(copy.deepcopy(model))
    from nncompress.parametrize import detach
    from nncompress.quant.kmeans import SharedWeights
    detach(copy.deepcopy(model)[0], SharedWeights)
    torch.testing.assert_close(model(x), expected, rtol=0, atol=0)
