"""Saved compressed models come back exactly: load_model replays the recipe, then loads every tensor."""
import json
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch

import nncompress as nc
from nncompress.batches import batch_size
from nncompress.fileio import load_weights, save_weights
from nncompress.flows.prune import prune_and_retrain
from nncompress.flows.ptq import calibration_batches, quantize_copy
from nncompress.train import TrainConfig, fit
from nncompress.validate import UserError
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


# --- one application path: apply_ hands over the report; schedules give data to criteria ------------

def test_apply_returns_the_model_and_hands_the_report_to_the_caller():
    net = torch.nn.Sequential(torch.nn.Linear(10, 10), torch.nn.ReLU(), torch.nn.Linear(10, 2))
    entries: list[dict] = []
    assert nc.prune_(net, nc.MagnitudePrune(sparsity=0.5), report=entries) is net
    assert entries == [{"method": "magnitude", "densities": {"0": 0.5, "2": 0.5}, "sparsity": 0.5}]


@dataclass(frozen=True, kw_only=True)
class CountingPrune(nc.MagnitudePrune):
    """A data-aware criterion stand-in: records how many calibration images its Context holds."""

    needs: ClassVar[frozenset[str]] = frozenset({"data"})

    def apply(self, model, ctx):
        ctx.record(self, calibration_images=sum(batch_size(b) for b in ctx.data))
        return super().apply(model, ctx)


def test_every_round_of_a_schedule_goes_through_run_method_with_the_calibration_data(digits):
    model = build_model("lenet300", digits.in_shape, 10)
    ctx = prune_and_retrain(model, CountingPrune(sparsity=0.75, scope="global"), digits, TrainConfig(),
                            schedule="iterative", rounds=2, finetune_epochs=0)
    counts = [e["calibration_images"] for e in ctx.report if "calibration_images" in e]
    sparsities = [round(e["sparsity"], 3) for e in ctx.report if "sparsity" in e]
    assert counts == [512, 512] and sparsities == [0.5, 0.75]


# --- save and load any model -------------------------------------------------------------------------

class TokenNet(torch.nn.Module):
    """Not a zoo model: token ids -> embedding -> masked mean -> two Linears (a random float probe
    would crash its embedding)."""

    def __init__(self, vocab: int = 50, dim: int = 16):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, dim)
        self.fc1, self.fc2 = torch.nn.Linear(dim, dim), torch.nn.Linear(dim, 4)

    def forward(self, input_ids, attention_mask):
        h = torch.relu(self.fc1(self.embed(input_ids)))
        pooled = (h * attention_mask[..., None]).sum(1) / attention_mask.sum(1, keepdim=True)
        return self.fc2(pooled)


def token_batch(seed: int, n: int = 8, length: int = 6) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, length + 1, (n,), generator=g)
    mask = (torch.arange(length)[None] < lengths[:, None]).long()
    return {"input_ids": torch.randint(1, 50, (n, length), generator=g) * mask, "attention_mask": mask}


TOKEN_RECIPE = [nc.MagnitudePrune(sparsity=0.5), nc.LinearQuant(weight_bits=6, act_bits=8)]


def compressed_token_net() -> TokenNet:
    net = TokenNet().eval()
    for method in TOKEN_RECIPE:
        nc.apply_(net, method, data=[token_batch(s) for s in range(3)])
    return net


@pytest.mark.parametrize("convert", [False, True])
def test_any_model_saved_with_an_example_loads_into_a_factory_exactly(tmp_path, convert):
    net = compressed_token_net()
    if convert:
        nc.convert_(net)
    path = nc.save_model(net, tmp_path / "t.safetensors", recipe=TOKEN_RECIPE, example=token_batch(7, n=2), task="toy")
    loaded, meta = nc.load_model(path, TokenNet)  # the class is a zero-argument factory
    test = token_batch(99)
    assert torch.equal(loaded.eval()(**test), net(**test))
    assert meta["recipe"]["converted"] is convert and meta["task"] == "toy"


def test_a_calibrating_recipe_without_example_asks_for_one_and_replays_on_the_one_given(tmp_path):
    net = compressed_token_net()
    path = nc.save_model(net, tmp_path / "t.safetensors", recipe=TOKEN_RECIPE)
    with pytest.raises(UserError, match="LinearQuant calibrates on data: pass example="):
        nc.load_model(path, TokenNet())
    loaded, _ = nc.load_model(path, TokenNet(), example=token_batch(5))
    test = token_batch(99)
    assert torch.equal(loaded.eval()(**test), net(**test))


def test_loading_errors_say_what_to_pass(tmp_path):
    path = nc.save_model(compressed_token_net(), tmp_path / "t.safetensors", recipe=TOKEN_RECIPE, example=token_batch(1))
    with pytest.raises(UserError, match="not from the zoo.*pass model="):
        nc.load_model(path)
    with pytest.raises(UserError, match=r"same class and configuration.*size mismatch for embed.weight.*\(9 in all\)"):
        nc.load_model(path, lambda: TokenNet(dim=8))
    other = lambda: torch.nn.ModuleDict({"embed": torch.nn.Embedding(50, 16), "head": torch.nn.Linear(16, 4)})  # noqa: E731
    with pytest.raises(UserError, match="replaying the saved recipe's LinearQuant on ModuleDict failed.*pass model="):
        nc.load_model(path, other)
    plain = nc.save_model(TokenNet(), tmp_path / "p.safetensors")
    with pytest.raises(UserError, match="same class and configuration.*Missing keys: head.bias, head.weight; "
                                        "unexpected keys: fc1.bias, fc1.weight, fc2.bias, fc2.weight"):
        nc.load_model(plain, other)
    with pytest.raises(UserError, match="is not an nn.Module"):
        nc.load_model(path, "TokenNet")
    with pytest.raises(UserError, match="pass in_shape=... and num_classes="):
        nc.save_model(TokenNet(), tmp_path / "z.safetensors", arch="lenet5")
    converted = nc.convert_(compressed_token_net())
    with pytest.raises(UserError, match="converted .* no recipe"):
        nc.save_model(converted, tmp_path / "c.safetensors")


def test_a_converted_zoo_model_loads_exactly_and_is_smaller(trained, digits, tmp_path):
    recipe = [nc.LinearQuant(weight_bits=4, act_bits=8)]
    quant = quantize_copy(trained, recipe[0], calibration_batches(digits, 256))
    fake = nc.save_model(quant, tmp_path / "f.safetensors", arch="resnet20", in_shape=digits.in_shape,
                         num_classes=10, recipe=recipe, fold_batchnorm=True)
    nc.convert_(quant)
    stored = nc.save_model(quant, tmp_path / "s.safetensors", arch="resnet20", in_shape=digits.in_shape,
                           num_classes=10, recipe=recipe, fold_batchnorm=True)
    loaded, meta = nc.load_model(stored)  # zoo: the random probe replays the recipe
    x = digits.test_x[:64]
    assert meta["recipe"]["converted"] is True and torch.equal(loaded.eval()(x), quant(x))
    assert stored.stat().st_size < 0.3 * fake.stat().st_size
