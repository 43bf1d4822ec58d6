"""Zero-skipping PE array (Yoo's lecture): LeNet-5 cycle counts after column pruning, per column sparsity.

Usage: python benchmarks/zeroskip.py [--sparsities 0.25 0.5 0.75] [--epochs 15] [--finetune-epochs 2]
           [--arrays 4x4 16x16] [--seed 0] [--out zeroskip]

One process: LeNet-5 trained dense with its zoo recipe on mnist-10k; for each column sparsity, a copy
has that fraction of the im2col columns of conv2, fc1 and fc2 with the lowest sum |w| removed
(`ColumnPrune`, the lecture's "prune columns whose sum of absolute weights < threshold"; conv1, whose
25 columns are the 5x5 pixels of the one input channel, is kept) and is fine-tuned at 1/10 the
learning rate; a copy of the dense model gets the same fine-tuning budget (the control every gap is
taken to). Then `hardware.zeroskip.model_zero_skip` counts, for one 28x28 image, the cycles of the
outer-product array with and without skipping the zero columns, the weight / activation element
reads and the PE utilisation, per layer, tiled to each array size. Cycle counts are exact (they
depend only on which columns are zero); accuracy is one seed (one test image = 0.05 points).
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
from pathlib import Path

import torch

from common import MNIST_DIR, header, table, write_results
from nncompress.api import training_config
from nncompress.config import Select, run_method
from nncompress.hardware.zeroskip import check_array, model_zero_skip
from nncompress.prune.schedules import retrain_config
from nncompress.prune.structured import ColumnPrune
from nncompress.train import evaluate, fit
from nncompress.zoo import build_model, load_dataset

EXCLUDED = ("conv1",)


def accuracy(model, data) -> float:
    return 100 * evaluate(model, data.test_loader())["accuracy"]


def finetune(model, data, config, epochs: int, seed: int) -> None:
    fit(model, data.train_loader(64, seed=seed + 1000), retrain_config(config, epochs, 0.1), log=lambda s: None,
        progress=False)


def run(data, args) -> tuple[dict, list[dict]]:
    """The dense and control accuracies, and per sparsity its model, accuracy and zero-skip rows."""
    torch.manual_seed(args.seed)
    dense = build_model("lenet5", data.in_shape, data.num_classes)
    config = training_config("lenet5", epochs=args.epochs, seed=args.seed)
    fit(dense, data.train_loader(64, seed=args.seed), config, log=lambda s: None, progress=False)
    control = copy.deepcopy(dense)
    finetune(control, data, config, args.finetune_epochs, args.seed)
    base = {"dense": accuracy(dense, data), "control": accuracy(control, data)}
    runs = []
    for sparsity in args.sparsities:
        model = copy.deepcopy(dense)
        run_method(model, ColumnPrune(sparsity=sparsity, targets=Select(exclude=EXCLUDED)))
        pruned = accuracy(model, data)
        finetune(model, data, config, args.finetune_epochs, args.seed)
        x = torch.zeros(1, *data.in_shape)
        runs.append({"sparsity": sparsity, "pruned": pruned, "acc": accuracy(model, data),
                     "stats": {a: model_zero_skip(model, x, array=a) for a in args.arrays}})
        print(sparsity, runs[-1]["acc"], flush=True)
    return base, runs


def summary_rows(base: dict, runs: list[dict], arrays: list[tuple[int, int]]) -> list[list]:
    rows = []
    for r in runs:
        for a in arrays:
            t = r["stats"][a][-1]
            rows.append([f"{100 * r['sparsity']:.0f}%", f"{100 * t.zero_columns:.1f}%", f"{r['pruned']:.2f}",
                         f"{r['acc']:.2f}", f"{r['acc'] - base['control']:+.2f}", f"{a[0]}x{a[1]}",
                         t.dense_cycles, t.cycles, f"**{t.speedup:.2f}x**", f"{t.weight_reads} / {t.dense_weight_reads}",
                         f"{t.activation_reads} / {t.dense_activation_reads}",
                         f"{100 * t.utilisation:.1f}% / {100 * t.dense_utilisation:.1f}%", t.metadata_bits])
    return rows


def layer_rows(stats) -> list[list]:
    return [[s.name, "" if s.name == "total" else f"{s.rows}x{s.depth}", "" if s.name == "total" else s.n,
             f"{100 * s.zero_columns:.1f}%", s.dense_cycles, s.cycles, f"{s.speedup:.2f}x",
             f"{s.weight_reads} / {s.dense_weight_reads}", f"{s.activation_reads} / {s.dense_activation_reads}",
             f"{100 * s.utilisation:.1f}% / {100 * s.dense_utilisation:.1f}%"] for s in stats]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sparsities", nargs="+", type=float, default=[0.25, 0.5, 0.75])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--finetune-epochs", type=int, default=2)
    parser.add_argument("--arrays", nargs="+", default=["4x4", "16x16"])
    parser.add_argument("--detail", type=float, default=0.5, help="the sparsity whose per-layer table is printed")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="zeroskip")
    args = parser.parse_args()
    args.arrays = [check_array(tuple(int(v) for v in a.lower().split("x"))) for a in args.arrays]
    torch.set_num_threads(args.threads)
    data = load_dataset("mnist-10k", MNIST_DIR)
    load = os.getloadavg()
    base, runs = run(data, args)
    text = header("Zero-skipping PE array: LeNet-5 after column pruning, per column sparsity (mnist-10k)") + "\n"
    text += (f"Load average at start {load[0]:.1f}. LeNet-5 dense: {args.epochs} epochs (zoo recipe: "
             f"{training_config('lenet5').epochs}), test accuracy {base['dense']:.2f}%; the same-budget control "
             f"(+{args.finetune_epochs} epochs at 0.1x lr, no pruning) {base['control']:.2f}%. Column pruning: "
             f"`ColumnPrune(sparsity, targets=Select(exclude={EXCLUDED}))` (lowest sum |w| per im2col column of "
             f"conv2, fc1, fc2; a Linear's columns are its input features), then {args.finetune_epochs} epochs at "
             f"0.1x lr. Seed {args.seed}, one seed. Cycles for one 28x28 image (batch 1; N = output positions), "
             "lowered weights W [out, in x kh x kw] against im2col inputs (`hardware/zeroskip.py`); reads count "
             "elements; metadata: one bit per column per tile; utilisation = MACs with a non-zero weight / "
             "(cycles x PEs), skipping / dense.\n\n")
    text += table(["column sparsity (target)", "zero columns (all layers)", "acc % pruned, before fine-tune",
                   "acc % fine-tuned", "vs control (points)", "array", "dense cycles", "zero-skip cycles",
                   "speed-up", "W reads (skip / dense)", "I reads (skip / dense)", "utilisation (skip / dense)",
                   "metadata bits"], summary_rows(base, runs, args.arrays))
    detail = next((r for r in runs if r["sparsity"] == args.detail), runs[0])
    for a in args.arrays:
        text += (f"\n### Per layer, {100 * detail['sparsity']:.0f}% of the columns pruned, {a[0]}x{a[1]} array\n\n")
        text += table(["layer", "W (M x K)", "N", "zero columns", "dense cycles", "zero-skip cycles", "speed-up",
                       "W reads (skip / dense)", "I reads (skip / dense)", "utilisation (skip / dense)"],
                      layer_rows(detail["stats"][a]))
    write_results(args.out, text)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
