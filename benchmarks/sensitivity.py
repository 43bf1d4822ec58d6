"""Per-layer pruning sensitivity of LeNet-5 on mnist-10k (Han et al. 2015 fig. 6; seed 000).

Usage: python benchmarks/sensitivity.py
Each layer alone is magnitude-pruned at 0..95% without retraining; test accuracy per point.
Writes results/sensitivity.md and results/lenet5_sensitivity.png.
"""
from __future__ import annotations

import torch

from common import MNIST_DIR, RESULTS, header, table, write_results
from nncompress.analysis.plots import plot_sensitivity
from nncompress.flows.prune import dense_model, layer_sensitivity
from nncompress.zoo import load_dataset


def main() -> None:
    torch.set_num_threads(2)
    data = load_dataset("mnist-10k", MNIST_DIR)
    model, _, _ = dense_model("lenet5", data, seed=0)
    curves = layer_sensitivity(model, data)
    png = plot_sensitivity(curves, RESULTS / "lenet5_sensitivity.png", "LeNet-5 on mnist-10k: per-layer sensitivity")
    text = header("Per-layer pruning sensitivity: LeNet-5 on mnist-10k (no retraining)") + "\n"
    text += f"Dense test accuracy {100 * curves.baseline:.2f}%. Plot: [{png.name}]({png.name}).\n\n"
    text += table(["layer", *(f"{int(round(100 * s))}%" for s in curves.sparsities)], curves.as_rows())
    text += (f"\nMost sensitive layer (lowest mean accuracy over the sweep): **{curves.most_sensitive()}**. "
             f"Per-layer targets within 0.5 points of dense: {curves.targets_for_budget(0.005)}.\n")
    write_results("sensitivity", text)


if __name__ == "__main__":
    main()
