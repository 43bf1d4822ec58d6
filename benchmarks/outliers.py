"""Activation outliers in a small transformer, and what handles them (seed 000, GPT-3 figure).

Usage: python benchmarks/outliers.py [--epochs 15]
Trains `tiny_vit` on mnist-10k, then builds a function-identical copy in which a few LayerNorm
output channels are 25x larger (the weights reading them are 25x smaller), as in LLMs. Both are
quantized with: per-tensor static activations (min-max and percentile), dynamic per-token
activations, SmoothQuant (alpha 0.5), and mixed precision (16-bit activations on the layers that
read the outlier channels). Test accuracy on 2,000 images; one float model, paired comparisons.
"""
from __future__ import annotations

import argparse
import copy

import torch

from common import MNIST_DIR, header, table, write_results
from nncompress.api import training_config
from nncompress.flows.ptq import calibration_batches, quantize_copy
from nncompress.quant.outliers import channel_outlier_ratio, inject_outlier_channels_
from nncompress.quant.ptq import DynamicQuant, LinearQuant
from nncompress.quant.smooth import SmoothQuant
from nncompress.train import evaluate, fit
from nncompress.zoo import build_model, load_dataset

OUTLIER_READERS = [f"blocks.{i}.{n}" for i in range(2) for n in ("attn.q", "attn.k", "attn.v", "fc1")]


def methods(act_bits: int) -> list[tuple[str, object]]:
    return [
        ("static per-tensor, min-max", LinearQuant(weight_bits=8, act_bits=act_bits)),
        ("static per-tensor, percentile", LinearQuant(weight_bits=8, act_bits=act_bits, observer="percentile")),
        ("dynamic per-token", DynamicQuant(weight_bits=8, act_bits=act_bits, per_token=True)),
        ("SmoothQuant alpha=0.5", SmoothQuant(alpha=0.5, weight_bits=8, act_bits=act_bits)),
        ("mixed: outlier readers at A16", LinearQuant(weight_bits=8, act_bits=act_bits,
                                                      layer_bits={n: 16 for n in OUTLIER_READERS})),
    ]


def with_outliers(model: torch.nn.Module, factor: float = 25.0) -> torch.nn.Module:
    out = copy.deepcopy(model)
    for block in out.blocks:
        inject_outlier_channels_(block.norm1, [block.attn.q, block.attn.k, block.attn.v], [3, 17], factor)
        inject_outlier_channels_(block.norm2, [block.fc1], [5, 40], factor)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(2)
    data = load_dataset("mnist-10k", MNIST_DIR)
    torch.manual_seed(0)
    model = build_model("tiny_vit", data.in_shape, data.num_classes)
    fit(model, data.train_loader(64), training_config("tiny_vit", epochs=args.epochs))
    model.eval()
    calib = calibration_batches(data)
    variants = {"as trained": model, "25x outlier channels": with_outliers(model)}
    ratio_rows, rows = [], []
    for label, net in variants.items():
        ratios = channel_outlier_ratio(net, ["blocks.0.attn.q", "blocks.0.fc1", "blocks.1.fc1", "blocks.1.fc2"], calib)
        ratio_rows.append([label, *(f"{r:.1f}x" for r in ratios.values())])
        float_acc = evaluate(net, data.test_loader())["accuracy"]
        rows.append([label, "float32", "-", f"{100 * float_acc:.2f}"])
        for act_bits in (8, 6, 4):
            for name, method in methods(act_bits):
                acc = evaluate(quantize_copy(net, method, calib), data.test_loader())["accuracy"]
                rows.append([label, name, f"W8A{act_bits}", f"{100 * acc:.2f}"])
                print(rows[-1], flush=True)
    text = header("Activation outliers in a small transformer (tiny_vit on mnist-10k)") + "\n"
    text += ("Largest / median per-channel max|x| at Linear inputs:\n\n"
             + table(["model", "blocks.0.attn.q", "blocks.0.fc1", "blocks.1.fc1", "blocks.1.fc2"], ratio_rows))
    text += "\nTest accuracy (%):\n\n" + table(["model", "activation handling", "bits", "test acc %"], rows)
    write_results("outliers", text)


if __name__ == "__main__":
    main()
