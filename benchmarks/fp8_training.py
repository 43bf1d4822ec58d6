"""FP8 training vs float32 training on mnist-10k (issue 13 B; lecture "Training FP8 model").

Usage: python benchmarks/fp8_training.py [--model lenet5] [--seeds 0 1 2] [--epochs 15] [--threads 1]
           [--variants tensor channel delayed]
Each seed trains the model twice from the same initialisation, with the same data order and the same
schedule: once in float32 and once with `FP8Training` (weights and activations E4M3 forward with
per-tensor amax scaling, gradients reaching weights and activations rounded to E5M2 backward).
Variants: "tensor" (just-in-time per-tensor scales), "channel" (block-scaled weights: one scale per
output channel), "delayed" (activation scale from the amax history of the last 16 steps).
Accuracy on the 2,000 test images; the acceptance bound is |FP8 - float32| <= 0.3 points.
"""
from __future__ import annotations

import argparse
import os
import statistics

import torch

from common import MNIST_DIR, header, table, write_results
from nncompress.flows.mixed_precision import fp8_train_model
from nncompress.quant.fp8_training import FP8Training
from nncompress.zoo import load_dataset

VARIANTS = {
    "tensor": FP8Training(),
    "channel": FP8Training(weight_scaling="channel"),
    "delayed": FP8Training(amax_history=16),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="lenet5")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=None, help="default: the model's recommended schedule")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--variants", nargs="+", default=["tensor"], choices=list(VARIANTS))
    parser.add_argument("--name", default=None, help="results file name (default fp8_training_<model>)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load_dataset("mnist-10k", MNIST_DIR)
    rows, summary = [], []
    for variant in args.variants:
        diffs, floats, fp8s = [], [], []
        for seed in args.seeds:
            r = fp8_train_model(args.model, data, VARIANTS[variant], seed=seed, epochs=args.epochs, progress=False)
            floats.append(r["float32"]["accuracy"])
            fp8s.append(r["fp8"]["accuracy"])
            diffs.append(r["difference"])
            rows.append([variant, seed, r["epochs"], f"{100 * r['float32']['accuracy']:.2f}", f"{100 * r['fp8']['accuracy']:.2f}",
                         f"{100 * r['difference']:+.2f}", f"{r['float32']['seconds']:.0f}", f"{r['fp8']['seconds']:.0f}"])
            print(rows[-1], flush=True)
        mean_diff = 100 * statistics.mean(diffs)
        summary.append([variant, len(args.seeds), f"{100 * statistics.mean(floats):.2f}",
                        f"{100 * statistics.mean(fp8s):.2f}", f"{mean_diff:+.2f}",
                        "yes" if abs(mean_diff) <= 0.3 else "no"])
    load = os.getloadavg()
    text = header(f"FP8 training vs float32: {args.model} on mnist-10k")
    text += (f"Machine load (1/5/15 min) at the end: {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} on "
             f"{os.cpu_count()} cores.\n\n"
             "FP8 = `FP8Training`: every Conv/Linear weight and input rounded to E4M3 (max 448) in the forward "
             "pass with a per-tensor amax scale s = amax / 448 computed just in time from the current tensor "
             "(variant `channel`: one scale per output channel for the weights, i.e. block-scaled; variant "
             "`delayed`: the activation scale from the largest amax of the last 16 steps); the gradients "
             "reaching each weight and each layer input rounded to E5M2 (max 57344) with a just-in-time "
             "per-tensor scale. Float32 and FP8 runs of one seed start from the same weights and see the same "
             "batches in the same order with the same schedule. BatchNorm, residual adds and the optimizer "
             "state stay float32 (simulated FP8: values on the FP8 grid, arithmetic in float32).\n\n")
    text += "## Means over seeds\n\n" + table(
        ["variant", "seeds", "float32 acc %", "FP8 acc %", "FP8 - float32 (points)", "within 0.3"], summary)
    text += "\n## Every run\n\n" + table(
        ["variant", "seed", "epochs", "float32 acc %", "FP8 acc %", "diff (points)", "float32 s", "FP8 s"], rows)
    write_results(args.name or f"fp8_training_{args.model}", text)


if __name__ == "__main__":
    main()
