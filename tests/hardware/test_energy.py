"""The 45 nm energy model (Horowitz, ISSCC 2014, as quoted in the lectures) against hand computations."""
import json
import math

import pytest
import torch
from torch import nn

import nncompress as nc
from nncompress.encode.container import read_nnc
from nncompress.flows.deep_compression import DeepCompressionConfig, share_and_encode
from nncompress.hardware.energy import (HOROWITZ_45NM, EnergyConfig, EnergyTable, LayerWorkload, estimate, interpolate,
                                        load_table, model_energy, storage_estimate, workloads_from_model)
from nncompress.report.stages import nnc_storage
from nncompress.validate import UserError
from nncompress.zoo import build_model

BIG_SRAM = EnergyConfig(sram_bytes=1 << 20)


def test_the_table_is_the_lectures():
    t = HOROWITZ_45NM
    assert (t.op("int_add", 8), t.op("int_add", 32), t.op("float_add", 16), t.op("float_add", 32)) == (0.03, 0.1, 0.4, 0.9)
    assert (t.op("int_mult", 8), t.op("int_mult", 32), t.op("float_mult", 16), t.op("float_mult", 32)) == (0.2, 3.1, 1.1, 3.7)
    assert (t.register_file, t.sram, t.dram) == (1.0, 5.0, 640.0)
    assert "Horowitz" in t.source and "ISSCC 2014" in t.source


def test_unlisted_widths_follow_the_power_law_through_the_neighbours():
    # int16 add: 0.03 * 2^(log(0.1/0.03)/log 4) = 0.03 * sqrt(10/3) = 0.05477 (Horowitz lists 0.05)
    assert interpolate({8: 0.03, 32: 0.1}, 16) == pytest.approx(0.03 * math.sqrt(10 / 3))
    # int16 mult: 0.2 * 2^(log 15.5 / log 4) = 0.2 * sqrt(15.5) = 0.7874
    assert HOROWITZ_45NM.op("int_mult", 16) == pytest.approx(0.2 * math.sqrt(15.5))
    # fp8 add below the listed range: the 16 -> 32 law extended, 0.4 / (0.9 / 0.4) = 0.1778
    assert HOROWITZ_45NM.op("float_add", 8) == pytest.approx(0.4 * 0.4 / 0.9)
    assert interpolate({8: 1.0, 16: 4.0, 32: 64.0}, 24) == pytest.approx(4.0 * 1.5 ** 4)  # between 16 and 32: k = 4


def _linear(weights):
    layer = nn.Linear(4, 2)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(weights, dtype=torch.float32))
        layer.bias.fill_(0.5)
    return nn.Sequential(layer)


def test_a_dense_fp32_layer_by_hand():
    model = _linear([[1, 2, 3, 4], [5, 6, 7, 8]])
    [w] = workloads_from_model(model, (4,))
    assert (w.macs, w.weights, w.nonzero, w.weight_bits, w.in_acts, w.out_acts) == (8, 8, 8, 32, 4, 2)
    assert w.storage_bits == 8 * 32 + 2 * 32
    [row] = estimate([w], config=BIG_SRAM).layers
    assert row.compute_pj == pytest.approx(8 * (3.7 + 0.9))        # 8 fp32 MACs: mult + add
    assert row.weight_memory_pj == pytest.approx(10 * 5.0)         # 10 words from SRAM
    assert row.act_memory_pj == pytest.approx(6 * 5.0)             # 4 read + 2 written
    assert row.bops == 8 * 32 * 32 and row.arithmetic == "fp32" and row.weights_in == "SRAM"
    # 16 bytes of SRAM: the 40 weight bytes do not fit, nor the 24 activation bytes
    [row] = estimate([w], config=EnergyConfig(sram_bytes=16)).layers
    assert (row.weight_memory_pj, row.act_memory_pj, row.weights_in, row.acts_in) == (10 * 640.0, 6 * 640.0, "DRAM", "DRAM")


def test_pruned_weights_skip_macs_and_shrink_storage():
    model = _linear([[1, 0, 3, 0], [0, 6, 0, 8]])
    [w] = workloads_from_model(model, (4,))
    assert w.nonzero == 4 and w.storage_bits == min(8 * 32, 4 * (32 + 4)) + 2 * 32 == 208
    [row] = estimate([w], config=BIG_SRAM).layers
    assert row.effective_macs == 4 and row.compute_pj == pytest.approx(4 * 4.6)
    assert row.weight_memory_pj == pytest.approx(208 / 32 * 5.0)
    [row] = estimate([w], config=EnergyConfig(sram_bytes=1 << 20, skip_zeros=False)).layers
    assert row.effective_macs == 8 and row.compute_pj == pytest.approx(8 * 4.6)


def test_integer_arithmetic_uses_the_narrow_multiplier_and_the_accumulator():
    w8 = LayerWorkload("fc", macs=100, weights=100, nonzero=100, weight_bits=8, storage_bits=800, act_bits=8,
                       in_acts=10, out_acts=10, integer=True)
    [row] = estimate([w8], config=BIG_SRAM).layers
    assert row.arithmetic == "int8x8" and row.compute_pj == pytest.approx(100 * (0.2 + 0.1))  # 8b mult + 32b add
    assert row.act_memory_pj == pytest.approx(20 * 8 / 32 * 5.0) and row.bops == 100 * 64
    assert storage_estimate(100, 10, 8, bias=2, index_bits=4) == 10 * 12 + 64


def test_activation_quantizers_make_a_layer_integer(digits):
    model = build_model("lenet300", digits.in_shape, digits.num_classes)
    nc.quantize_(model, nc.LinearQuant(weight_bits=8, act_bits=8), data=[digits.train_x[:64]])
    rows = {w.name: w for w in workloads_from_model(model, digits.in_shape)}
    assert rows["fc2"].integer and rows["fc2"].act_bits == 8 and rows["fc2"].weight_bits == 8


@pytest.mark.slow  # about 8 s: k-means on 25k conv2 weights, encode, decode
def test_lenet5_deep_compressed_memory_energy_falls_by_the_compression_ratio(digits, tmp_path):
    """LeNet-5 dense fp32 vs Deep-Compressed (pruned 90 % per layer, conv 8 / fc 5 bit codebooks, Huffman .nnc):
    with all weights in SRAM, weight memory energy falls by exactly dense bytes / stored bytes, and
    with the 256 KB default the dense weights (524 KB) sit in DRAM: 128x more on top."""
    torch.manual_seed(0)
    dense = build_model("lenet5", digits.in_shape, digits.num_classes)
    model = build_model("lenet5", digits.in_shape, digits.num_classes)
    model.load_state_dict(dense.state_dict())
    nc.prune_(model, nc.MagnitudePrune(sparsity=0.9, scope="layer"))
    config = DeepCompressionConfig(bits={"conv": 8, "fc": 5}, codebook_epochs=0)
    decoded, result = share_and_encode(model, "lenet5", digits, config, seed=0, out=tmp_path / "lenet5.nnc")
    storage, bits = nnc_storage(read_nnc(tmp_path / "lenet5.nnc"))
    # conv1 keeps 50 of 500 weights: 50 values need 64 clusters at most, so 6 bits, not 8
    assert bits == {"conv1": math.ceil(math.log2(50)), "conv2": 8, "fc1": 5, "fc2": 5}

    params = sum(p.numel() for p in dense.parameters())       # every parameter is in a weight layer
    stored_bytes = sum(storage.values()) / 8                  # weight + bias sections of the file
    before = model_energy(dense, digits.in_shape, config=BIG_SRAM)
    after = model_energy(decoded, digits.in_shape, config=BIG_SRAM, storage_bits=storage, weight_bits=bits)
    # by hand: 32-bit words x 5 pJ from SRAM
    assert before.totals["weight_memory_pj"] == pytest.approx(params * 5.0)
    assert after.totals["weight_memory_pj"] == pytest.approx(stored_bytes / 4 * 5.0)
    ratio = before.totals["weight_memory_pj"] / after.totals["weight_memory_pj"]
    assert ratio == pytest.approx(4 * params / stored_bytes)
    file_ratio = 4 * params / result["file_bytes"]
    assert file_ratio < ratio < 1.1 * file_ratio             # the file adds only its header to the layers
    assert ratio > 20
    # all memory (activations stay fp32): still falls by most of the compression ratio
    assert before.totals["memory_pj"] / after.totals["memory_pj"] > 0.5 * file_ratio
    # default 256 KB SRAM: dense weights (4 x params bytes > 256 KB) come from DRAM at 640 pJ
    default_before = model_energy(dense, digits.in_shape)
    default_after = model_energy(decoded, digits.in_shape, storage_bits=storage, weight_bits=bits)
    assert 4 * params > 256 * 1024 and default_before.layers[0].weights_in == "DRAM"
    assert default_before.totals["weight_memory_pj"] == pytest.approx(params * 640.0)
    assert default_after.totals["weight_memory_pj"] / default_before.totals["weight_memory_pj"] == pytest.approx(
        1 / (128 * ratio))
    # compute: the same fp32 MACs, only those with a kept weight run
    kept = after.totals["effective_macs"] / before.totals["effective_macs"]
    assert after.totals["compute_pj"] == pytest.approx(kept * before.totals["compute_pj"])


def test_a_user_table_from_yaml_or_json(tmp_path):
    yaml_path = tmp_path / "table.yaml"
    yaml_path.write_text("source: my 7 nm guess\nint_add: {8: 0.01, 32: 0.04}\nint_mult: {8: 0.05, 32: 0.8}\n"
                         "float_add: {16: 0.1, 32: 0.3}\nfloat_mult: {16: 0.3, 32: 1.0}\n"
                         "register_file: 0.3\nsram: 1.5\ndram: 200\n")
    table = load_table(yaml_path)
    assert table.op("int_mult", 8) == 0.05 and table.dram == 200.0 and table.source == "my 7 nm guess"
    json_path = tmp_path / "table.json"
    json_path.write_text(json.dumps({**HOROWITZ_45NM.as_dict(), "dram": 100}))
    assert load_table(json_path).dram == 100.0 and load_table(json_path).int_add == {8: 0.03, 32: 0.1}


@pytest.mark.parametrize("change,message", [
    ({"dramm": 1.0}, "did you mean 'dram'"),
    ({"sram": -5}, "sram=-5.0 must be a finite number > 0"),
    ({"sram": "5 pJ"}, "must be a finite number of pJ"),
    ({"int_add": {8: 0.03}}, "at least two bit widths"),
    ({"int_mult": {8: 0.2, "x": 3.1}}, "bit width 'x' must be an integer"),
    ({"float_add": {16: 0.4, 32: float("nan")}}, "must be a finite number of pJ"),
])
def test_bad_tables_are_refused_with_the_field(change, message):
    data = {**HOROWITZ_45NM.as_dict(), **change}
    with pytest.raises(UserError, match="(?i)" + message.replace("(", r"\(").replace(")", r"\)")):
        EnergyTable.from_dict(data)
    missing = HOROWITZ_45NM.as_dict()
    del missing["dram"]
    with pytest.raises(UserError, match="missing dram"):
        EnergyTable.from_dict(missing)


def test_energy_command_prints_the_per_layer_table_and_json(main, digits, tmp_path):
    code, stdout, stderr = main("energy", "lenet5", "--sram-kb", "1024", "--json", str(tmp_path / "e.json"))
    assert code == 0, stderr
    assert all(name in stdout for name in ("conv1", "conv2", "fc1", "fc2", "total", "SRAM"))
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["config"]["sram_bytes"] == 1 << 20
    params = sum(row["storage_bits"] for row in result["layers"]) / 32
    assert result["totals"]["weight_memory_pj"] == pytest.approx(params * 5.0)
    code, _, stderr = main("energy", "lenet5", "--table", str(tmp_path / "missing.yaml"))
    assert code == 2 and "missing.yaml" in stderr
