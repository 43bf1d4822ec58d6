"""Saved compressed models come back exactly: load_model replays the recipe, then loads every tensor."""
import json

import pytest
import torch

import nncompress as nc
from nncompress.fileio import load_weights, save_weights
from nncompress.flows.ptq import calibration_batches, quantize_copy
from nncompress.train import TrainConfig, fit
from nncompress.zoo import build_model
from test_cli import run_cli

RECIPES = {
    "static W8A8": [nc.LinearQuant(weight_bits=8, act_bits=8, observer="percentile")],
    "W4 group weight-only": [nc.LinearQuant(weight_bits=4, act_bits=None, granularity="group", group_size=8)],
    "dynamic per-token": [nc.DynamicQuant(weight_bits=6, per_token=True)],
    "SmoothQuant": [nc.SmoothQuant(alpha=0.5)],
    "pruned then quantized": [nc.MagnitudePrune(sparsity=0.8, scope="global"), nc.LinearQuant(weight_bits=5, act_bits=6)],
    "k-means codebooks": [nc.KMeansQuant(bits=3)],
}


@pytest.fixture(scope="module")
def trained(digits):
    torch.manual_seed(0)
    model = build_model("resnet20", digits.in_shape, 10)  # with BatchNorm: the recipe folds it first
    fit(model, digits.train_loader(64), TrainConfig(epochs=1, lr=0.05), progress=False, log=lambda s: None)
    return model.eval()


@pytest.mark.parametrize("name", RECIPES)
def test_load_model_rebuilds_a_compressed_model_exactly(name, trained, digits, tmp_path):
    quant = trained
    calib = calibration_batches(digits, 256)
    for method in RECIPES[name]:
        quant = quantize_copy(quant, method, calib)
    path = nc.save_model(quant, tmp_path / "q.safetensors", arch="resnet20", in_shape=digits.in_shape,
                         num_classes=10, recipe=RECIPES[name], fold_batchnorm=True)
    loaded, meta = nc.load_model(path)
    assert [m["method"] for m in meta["recipe"]["methods"]] == [m.name for m in RECIPES[name]]
    x = digits.test_x[:64]
    assert torch.equal(loaded.eval()(x), quant(x))


def test_a_recipe_naming_an_unknown_method_is_a_clear_error(trained, digits, tmp_path):
    path = nc.save_model(trained, tmp_path / "m.safetensors", arch="resnet20", in_shape=digits.in_shape, num_classes=10)
    state, meta = load_weights(path)
    save_weights(path, state, {**meta, "recipe": {"methods": [{"method": "linearquant"}]}})
    with pytest.raises(ValueError, match="unknown method 'linearquant'"):
        nc.load_model(path)


def test_quantize_cli_saves_a_model_that_evaluates_the_same(tmp_path):
    weights, quantized = tmp_path / "m.safetensors", tmp_path / "q.safetensors"
    done = run_cli("train", "lenet5", "--epochs", "2", "--optimizer", "adam", "--lr", "0.002", "--out", str(weights))
    assert done.returncode == 0, done.stderr
    done = run_cli("quantize", str(weights), "--weight-bits", "4", "--act-bits", "6", "--observer", "mse",
                   "--out", str(quantized), "--json", str(tmp_path / "q.json"))
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "q.json").read_text())
    assert {"float_accuracy", "quantized_accuracy", "weight_sqnr_db", "output_error"} <= report.keys()
    done = run_cli("evaluate", str(quantized), "--json", str(tmp_path / "e.json"))
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "e.json").read_text())["accuracy"] == report["quantized_accuracy"]


def test_a_compressed_model_saved_without_its_recipe_is_a_clear_error(trained, digits, tmp_path):
    quant = quantize_copy(trained, nc.LinearQuant(weight_bits=8, act_bits=8), calibration_batches(digits, 128))
    path = nc.save_model(quant, tmp_path / "q.safetensors", arch="resnet20", in_shape=digits.in_shape, num_classes=10)
    with pytest.raises(ValueError, match="saved without recipe"):
        nc.load_model(path)
