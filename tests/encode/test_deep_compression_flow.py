"""The Deep Compression flow writes through the 3.0 container and its per-layer table adds up to the file."""
import copy
import dataclasses
import math
import os
from pathlib import Path

import pytest
import torch

import nncompress as nc
from nncompress.encode.container import parse, read_nnc
from nncompress.flows.deep_compression import DeepCompressionConfig, layer_bits, layer_row, overhead_row, share_and_encode
from nncompress.zoo import build_model

GOLDEN = Path(__file__).parent / "golden"


def test_bits_by_layer_kind_become_layer_patterns():
    assert layer_bits({"conv": 8, "fc": 5, "fc3": 6}) == {"type:Conv1d|Conv2d|Conv3d": 8, "type:Linear": 5, "fc3": 6}


@pytest.fixture(scope="module")
def compressed(digits, tmp_path_factory):
    torch.manual_seed(0)
    model = build_model("lenet300", digits.in_shape, digits.num_classes)
    nc.prune_(model, nc.MagnitudePrune(sparsity=0.9, scope="layer"))
    path = tmp_path_factory.mktemp("dc") / "lenet300.nnc"
    config = DeepCompressionConfig(bits={"fc": 4, "fc3": 5}, codebook_epochs=0)
    decoded, result = share_and_encode(model, "lenet300", digits, config, seed=0, out=path)
    return model, decoded, result, path


def test_the_decoded_file_is_the_simulated_model(compressed):
    model, decoded, result, path = compressed
    assert result["exact_roundtrip"] and result["compressed_accuracy"] == result["simulated_accuracy"]
    assert result["file_bytes"] == os.path.getsize(path)
    codebooks = {name: chain[-1].tensors["codebook"].numel() for name, chain in read_nnc(path).chains.items()}
    assert codebooks == {"fc1.weight": 16, "fc2.weight": 16, "fc3.weight": 32}  # fc: 4 bits, fc3: 5


def test_the_per_layer_bytes_add_up_to_the_file(compressed):
    _, _, result, path = compressed
    rows = result["layers"]
    assert [r["layer"] for r in rows] == ["fc1", "fc2", "fc3"]
    assert sum(r["bytes"] for r in rows) + result["overhead"]["bytes"] == os.path.getsize(path)
    for r in rows:
        assert r["rate_pqh"] * 32 * r["weights"] == pytest.approx(8 * r["bytes"])
        assert r["kept"] == pytest.approx(0.1, abs=0.001)
        assert r["weight_bits_pq"] in (4, 5) and r["weight_bits_pqh"] <= r["weight_bits_pq"] + 0.2
        assert 2 <= r["index_bits_pq"] <= 12 and r["index_bits_pqh"] >= r["index_entropy"] - 1e-9
    biases = 2 * (300 + 100 + 10)  # float16
    assert result["overhead"]["tensors"] == 3 and result["overhead"]["bytes"] > biases + 16


@pytest.mark.parametrize("name", ["legacy_v1.nnc", "legacy_v2.nnc", "tiny_v3.nnc"])
def test_rows_of_any_file_add_up_to_its_size(name):
    data = (GOLDEN / name).read_bytes()
    nnc = parse(data)
    rows = [layer_row(layer) for layer in nnc.layers]
    assert sum(r["bytes"] for r in rows) + overhead_row(nnc)["bytes"] == len(data)
    assert all(r["bytes"] > 0 and math.isfinite(r["rate_pq"]) for r in rows)


def test_biases_as_integer_codes_shrink_the_file_and_decode_exactly(digits, tmp_path):
    """bias_bits=8: every bias stored as 8-bit codes + one float32 scale (symmetric per tensor), the
    file smaller than with float16 biases, the decoded model the simulated one bit for bit, each
    bias within half a step of its float16 value, and the per-layer rows still add up to the file."""
    from nncompress.analysis.metrics import weight_layers
    from nncompress.encode.deep_compression import bias_quantizer
    torch.manual_seed(0)
    model = build_model("lenet5", digits.in_shape, digits.num_classes)
    nc.prune_(model, nc.MagnitudePrune(sparsity=0.95, scope="layer"))
    config = DeepCompressionConfig(bits={"conv": 3, "fc": 2}, codebook_epochs=0)
    runs = {}
    for bias_bits in (None, 8):
        runs[bias_bits] = share_and_encode(copy.deepcopy(model), "lenet5", digits,
                                           dataclasses.replace(config, bias_bits=bias_bits), seed=0,
                                           out=tmp_path / f"{bias_bits}.nnc")
    (_, plain), (decoded, coded) = runs[None], runs[8]
    assert coded["exact_roundtrip"] and coded["compressed_accuracy"] == coded["simulated_accuracy"]
    chains = read_nnc(tmp_path / "8.nnc").chains
    biases = [name for name in chains if name.endswith(".bias")]
    layers = weight_layers(model)
    with_bias = [n for n, m in layers.items() if m.bias is not None]
    assert sorted(biases) == sorted(f"{n}.bias" for n in with_bias) and all(chains[n][0].kind == "linear" and chains[n][0].meta["bits"] == 8 for n in biases)
    n_biases = sum(layers[n].bias.numel() for n in with_bias)
    assert plain["file_bytes"] - coded["file_bytes"] >= 0.5 * n_biases  # >= 4 of the 16 bits saved per bias
    assert abs(coded["compressed_accuracy"] - plain["compressed_accuracy"]) <= 0.02
    decoded_layers = weight_layers(decoded)
    for name in with_bias:
        half = layers[name].bias.detach().half().float()
        step = float(bias_quantizer(half, 8).scale)
        assert bool(((decoded_layers[name].bias - half).abs() <= step / 2 + 1e-12).all())
    assert sum(r["bytes"] for r in coded["layers"]) + coded["overhead"]["bytes"] == coded["file_bytes"]
    with pytest.raises(nc.UserError, match=r"bias_bits=1 must be an integer in \[2, 16\]"):
        DeepCompressionConfig(bias_bits=1)


def test_biases_quantized_twice_or_already_transformed():
    """quantize_biases_ keeps a bias already on its grid, and refuses (naming the layer) one that
    another transform holds, e.g. LinearQuant's int32 bias grid."""
    from nncompress.encode.deep_compression import quantize_biases_
    from nncompress.parametrize import transforms
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 4))
    quantize_biases_(model, 6)
    quantize_biases_(model, 6)
    assert len(transforms(model[0], "bias")) == 1
    with pytest.raises(nc.UserError, match=r"layer '0': its bias is already transformed \(FakeQuant\)"):
        quantize_biases_(model, 8)
    static = nc.quantize_(torch.nn.Sequential(torch.nn.Linear(8, 4)), nc.LinearQuant(weight_bits=8, act_bits=8),
                          data=[torch.randn(16, 8)])
    with pytest.raises(nc.UserError, match=r"layer '0': its bias is already transformed \(BiasQuant\)"):
        quantize_biases_(static, 8)
