"""MIRACLE end to end on the digits: the written file is within the byte budget, its indices take
exactly blocks x C bits, it decodes bit for bit to the coded model, the coded model is far above
chance, and the flow trains exactly the phases its same-budget control replays."""
import copy
import os

import pytest
import torch
from torch import nn

from nncompress.analysis.metrics import count_params
from nncompress.encode.container import read_nnc
from nncompress.encode.model import decode_model
from nncompress.flows.deep_compression import layer_row
from nncompress.flows.control import StepCounter, same_budget_control, total_steps
from nncompress.flows.minimal_random_code import MiracleConfig, compress_miracle, miracle_phases, split_blocks
from nncompress.flows.prune import dense_model
from nncompress.train import evaluate
from nncompress.validate import UserError

CONFIG = MiracleConfig(block_bits=8, variational_epochs=3, balance_epochs=1, rounds=3)


def test_written_file_fits_the_budget_decodes_exactly_and_classifies(digits, tmp_path):
    model, _, _ = dense_model("lenet300", digits, seed=0)
    dense = copy.deepcopy(model)
    budget = 4 * count_params(model) // 20  # 20x
    with StepCounter() as steps:
        decoded, r = compress_miracle(model, "lenet300", digits, CONFIG, budget_bytes=budget, seed=0,
                                      out=tmp_path / "m.nnc")
    assert r["exact_roundtrip"] and os.path.getsize(tmp_path / "m.nnc") == r["file_bytes"] <= budget
    assert r["local_reparameterization"] and not model.fc1._forward_hooks  # the default; its hooks are gone
    assert r["file_bytes"] > budget - 64  # the budget is used, not left on the table
    stored = read_nnc(tmp_path / "m.nnc")
    rows = {row["layer"]: row for row in (layer_row(layer) for layer in stored.layers)}
    for name, blocks in r["blocks"].items():
        assert stored.storage[f"{name}.weight"][-1]["indices"]["bytes"] == -(-blocks * 8 // 8)
        numel = getattr(dense, name).weight.numel()  # the layer table reports bits per weight, not per index
        assert rows[name]["weight_bits_pq"] == pytest.approx(8 * blocks / numel)
        assert rows[name]["weight_bits_pqh"] == pytest.approx(8 * blocks / numel)
    assert r["index_bits"] == 8 * sum(r["blocks"].values())
    assert evaluate(decoded, digits.test_loader())["accuracy"] > 0.8  # dense: about 0.97; chance 0.1
    phases = miracle_phases(CONFIG, 0)
    assert steps.steps == total_steps(phases, digits)
    _, info = same_budget_control(dense, digits, phases)
    assert info["steps"] == steps.steps


def test_blocks_are_split_by_weight_with_a_floor_per_layer():
    assert split_blocks(10, {"a": 3.0, "b": 1.0, "c": 0.0}, {"a": 100, "b": 100, "c": 5000}) == {"a": 6, "b": 2, "c": 2}
    assert sum(split_blocks(1000, {"a": 0.4, "b": 0.6}, {"a": 500, "b": 300}).values()) == 800  # at most one per weight


def test_a_model_outside_the_zoo_is_coded_and_read_back_into_its_own_module(digits, tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    lines = []
    decoded, r = compress_miracle(net, "my-mlp", digits, MiracleConfig(block_bits=8, variational_epochs=1,
                                                                        balance_epochs=1, rounds=2,
                                                                        local_reparameterization=False),
                                  budget_bytes=1200, seed=0, out=tmp_path / "mlp.nnc", log=lines.append)
    assert r["exact_roundtrip"] and r["file_bytes"] <= 1200 and not r["local_reparameterization"]  # the paper's
    assert len(lines) == 2 + 1 and lines[0].startswith("variational+balance: epoch 1/2")  # variational + balance, then one coding epoch
    fresh = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    again = decode_model(read_nnc(tmp_path / "mlp.nnc"), model=fresh)
    assert torch.equal(again(digits.test_x[:64]), decoded(digits.test_x[:64]))


@pytest.mark.parametrize("arch, budget, message", [
    ("lenet5", 10_000, "zoo model whose tensors differ"),   # the name of another zoo model
    ("lenet300", 400, "below the smallest MIRACLE file of this model"),  # header + float16 biases alone are more
    ("lenet300", 0, "a budget of 0 bytes is below the smallest"),  # e.g. a ratio too high for the model
    ("lenet300", -1, "budget_bytes"),
])
def test_a_wrong_name_or_an_impossible_budget_is_refused_before_training(digits, arch, budget, message):
    model, _, _ = dense_model("lenet300", digits, seed=0)
    with StepCounter() as steps, pytest.raises(UserError, match=message):
        compress_miracle(model, arch, digits, CONFIG, budget_bytes=budget)
    assert steps.steps == 0


@pytest.mark.parametrize("field, value, message", [
    ("block_bits", 17, "block_bits"), ("rounds", 0, "rounds"), ("lr", 0.0, "lr"),
    ("distill", {"alpha": 0.5}, "MiracleConfig.distill=.* must be a DistillConfig"),
    ("local_reparameterization", "yes", "must be a bool"),
])
def test_the_config_names_a_bad_field(field, value, message):
    with pytest.raises(UserError, match=message):
        MiracleConfig(**{field: value})


def test_data_that_is_neither_a_dataset_nor_batch_data_is_refused_with_the_fix():
    with pytest.raises(UserError, match=r"nc.BatchData\(train_batches, test_batches\)"):
        compress_miracle(nn.Linear(2, 2), "my-net", [(torch.ones(1, 2), torch.zeros(1).long())], CONFIG,
                         budget_bytes=1000)
