"""Post-training quantization on mnist-10k: our PTQ configurations vs PyTorch's own (torch.ao FX).

Usage: python benchmarks/ptq.py [--models lenet5 resnet20] [--epochs-resnet 6]
One float model per architecture (seed 0) is trained once; every configuration quantizes a copy
of it with the same 512 calibration images (the first 512 training images), so accuracy
differences are paired (one seed is enough, see BENCHMARKING.md). Accuracy on the 2,000 test images.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import tempfile
import warnings
from pathlib import Path

import torch

from common import MNIST_DIR, header, table, write_results
from nncompress.analysis.metrics import sqnr_db
from nncompress.flows.ptq import calibration_batches
from nncompress.recipes import Recipe, load_recipe
from nncompress.recipes.runner import execute, prepare
from nncompress.recipes.schema import edited, stage_index
from nncompress.api import training_config
from nncompress.train import evaluate, fit
from nncompress.zoo import build_model, load_dataset

#: (label, quantize-stage method spec): each runs as the quantize stage of recipes/ptq-int8-<arch>.yaml
#: (the first one is that recipe's own) on a copy of the same trained float model.
CONFIGS = [
    ("W8A8 channel minmax", {"method": "linear", "weight_bits": 8, "act_bits": 8}),
    ("W8A8 channel percentile", {"method": "linear", "weight_bits": 8, "act_bits": 8, "observer": "percentile"}),
    ("W8A8 channel mse", {"method": "linear", "weight_bits": 8, "act_bits": 8, "observer": "mse"}),
    ("W8A8 channel entropy", {"method": "linear", "weight_bits": 8, "act_bits": 8, "observer": "entropy"}),
    ("W8A8 tensor minmax", {"method": "linear", "weight_bits": 8, "act_bits": 8, "granularity": "tensor"}),
    ("W8A8 dynamic per-token", {"method": "dynamic", "weight_bits": 8, "act_bits": 8, "per_token": True}),
    ("W6A8 channel minmax", {"method": "linear", "weight_bits": 6, "act_bits": 8}),
    ("W6A8 tensor minmax", {"method": "linear", "weight_bits": 6, "act_bits": 8, "granularity": "tensor"}),
    ("W4A8 channel minmax", {"method": "linear", "weight_bits": 4, "act_bits": 8}),
    ("W4A8 channel mse", {"method": "linear", "weight_bits": 4, "act_bits": 8, "observer": "mse"}),
    ("W4A8 group-16 minmax", {"method": "linear", "weight_bits": 4, "act_bits": 8, "granularity": "group", "group_size": 16}),
    ("W4 weight-only tensor", {"method": "linear", "weight_bits": 4, "act_bits": None, "granularity": "tensor"}),
    ("W4 weight-only channel", {"method": "linear", "weight_bits": 4, "act_bits": None}),
    ("W4 weight-only group-16", {"method": "linear", "weight_bits": 4, "act_bits": None, "granularity": "group", "group_size": 16}),
    ("W4 weight-only channel mse", {"method": "linear", "weight_bits": 4, "act_bits": None, "observer": "mse"}),
]
RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def config_recipe(base: Recipe, quantize: int, spec: dict) -> Recipe:
    """The recipe with its quantize stage's method replaced by `spec` (stage options kept)."""
    stage = base.marked.data["stages"][quantize]["quantize"]
    options = {k: v for k, v in stage.items() if k in type(base.stages[quantize]).model_fields and k != "method"}
    return edited(base, {("stages", quantize, "quantize"): {**options, **spec}})


def torch_ao_ptq(model: torch.nn.Module, calib: list, example: torch.Tensor) -> torch.nn.Module:
    """PyTorch's FX graph-mode static PTQ with its default x86 qconfig (per-channel int8 weights,
    histogram-observed uint8 activations, reduce_range), calibrated on the same batches."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = prepare_fx(copy.deepcopy(model).eval(), get_default_qconfig_mapping("x86"), (example,))
        with torch.no_grad():
            for x, _ in calib:
                prepared(x)
        return convert_fx(prepared)


def train_float(arch: str, data, seed: int, epochs: int | None) -> torch.nn.Module:
    """A float model trained as recipes/ptq-int8-<arch>.yaml's train stage does (ptq_vs_torch.py uses
    it for several seeds; its fit seed stays the recommended config's, as the published tables ran)."""
    torch.manual_seed(seed)
    model = build_model(arch, data.in_shape, data.num_classes)
    fit(model, data.train_loader(64, seed=seed), training_config(arch, epochs=epochs))
    return model.eval()


def run_model(arch: str, data, epochs: int | None) -> list[list[object]]:
    """The recipe's train stage once (seed 0), then each configuration as its quantize stage on a copy
    of the trained run (recipes.runner.execute: what `nncompress run recipes/ptq-int8-<arch>.yaml` runs)."""
    base = load_recipe(RECIPES / f"ptq-int8-{arch}.yaml")
    train, quantize = stage_index(base, "train"), stage_index(base, "quantize")
    if epochs is not None:
        base = edited(base, {("stages", train, "train", "epochs"): epochs})
    run = prepare(base, data, tempfile.mkdtemp(), 0)
    for index in range(quantize):
        execute(base, run, index)
    model = run.model.eval()
    calib = calibration_batches(data)
    test_x = data.test_x[:500]
    with torch.no_grad():
        reference = model(test_x)
    float_acc = evaluate(model, data.test_loader())["accuracy"]
    rows = [[arch, "float32", f"{100 * float_acc:.2f}", "+0.00", "-"]]
    for name, spec in CONFIGS:
        branch = dataclasses.replace(run, model=copy.deepcopy(model), methods=list(run.methods))
        acc = execute(config_recipe(base, quantize, spec), branch, quantize)["test_accuracy"]
        with torch.no_grad():
            logits_sqnr = sqnr_db(reference, branch.model(test_x))
        rows.append([arch, f"nncompress {name}", f"{100 * acc:.2f}", f"{100 * (acc - float_acc):+.2f}", f"{logits_sqnr:.1f}"])
        print(rows[-1], flush=True)
    ao = torch_ao_ptq(model, calib, data.train_x[:1])
    acc = evaluate(ao, data.test_loader())["accuracy"]
    with torch.no_grad():
        logits_sqnr = sqnr_db(reference, ao(test_x))
    rows.append([arch, "torch.ao FX W8A8 (x86 default)", f"{100 * acc:.2f}", f"{100 * (acc - float_acc):+.2f}", f"{logits_sqnr:.1f}"])
    print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["lenet5", "resnet20"])
    parser.add_argument("--epochs-resnet", type=int, default=6)
    args = parser.parse_args()
    torch.set_num_threads(2)
    data = load_dataset("mnist-10k", MNIST_DIR)
    rows = []
    for arch in args.models:
        rows += run_model(arch, data, args.epochs_resnet if arch == "resnet20" else None)
    text = header("Post-training quantization on mnist-10k (test split, 2,000 images)") + "\n"
    text += ("Weights: symmetric signed int, restricted range; activations: affine uint8 on each Conv/Linear "
             "input, int32 bias with S_b = S_W S_X. BatchNorm folded first. 'logits SQNR' compares the "
             "quantized model's logits with float on 500 test images.\n\n")
    text += table(["model", "configuration", "test acc %", "vs float (points)", "logits SQNR dB"], rows)
    write_results("ptq", text)


if __name__ == "__main__":
    main()
