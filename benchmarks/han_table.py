"""Han et al. 2015's tables and figure on mnist-10k: per-layer Weights / FLOP / Act% / Weights% / FLOP%
of pruned LeNet-300-100 and LeNet-5, and "accuracy vs parameters pruned" for L1 vs L2 regularisation,
with and without retraining (Shanbhag's lecture, seed 003, "Results" and "Accuracy vs. Pruning").

Usage: python benchmarks/han_table.py [--threads 1] [--epochs 6] [--l1 1e-5]

Part 1: each LeNet is trained dense, magnitude-pruned with benchmarks/pruning.py's targets (LeNet-300:
92% of fc1/fc2, 74% of fc3; LeNet-5: 92.5% global) in 2 iterative rounds with 2 retraining epochs each
at 0.3x lr, and measured with `analysis/layer_table.py: han_table` on the test images.
Part 2: LeNet-300-100 trained once with L2 (weight decay 1e-3, the zoo's recipe) and once with L1
(lambda sum |w|, no weight decay); each is magnitude-pruned (one global threshold) to 50..97.5% and
evaluated without retraining and after 1 retraining epoch at 0.1x lr with the same regulariser.
Reduced budgets (shared machine); one seed; nothing tuned on the test split.
"""
from __future__ import annotations

import argparse
import copy
import os
from dataclasses import replace
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from common import MNIST_DIR, RESULTS, header, table, write_results  # noqa: E402
from nncompress.analysis.layer_table import format_table, han_table  # noqa: E402
from nncompress.api import training_config  # noqa: E402
from nncompress.config import run_method  # noqa: E402
from nncompress.flows.prune import prune_and_retrain  # noqa: E402
from nncompress.prune.unstructured import MagnitudePrune  # noqa: E402
from nncompress.train import evaluate, fit  # noqa: E402
from nncompress.zoo import build_model, load_dataset  # noqa: E402

HAN = {"lenet300": "fc1 38% / 8% / 8%, fc2 65% / 9% / 4%, fc3 100% / 26% / 17%, total 46% / 8% / 8%",
       "lenet5": "conv1 82% / 66% / 66%, conv2 72% / 12% / 10%, fc1 55% / 8% / 6%, fc2 100% / 19% / 10%, "
                 "total 77% / 8% / 16%"}
SPARSITIES = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.975)


def acc(model, dataset) -> float:
    return 100 * evaluate(model, dataset.test_loader())["accuracy"]


def part1(dataset, epochs: int) -> str:
    methods = {"lenet300": MagnitudePrune(sparsity=0.92, layer_sparsity={"fc3": 0.74}),
               "lenet5": MagnitudePrune(sparsity=0.925, scope="global")}
    text = ""
    for arch, method in methods.items():
        torch.manual_seed(0)
        model = build_model(arch, dataset.in_shape, dataset.num_classes)
        base = training_config(arch, epochs=epochs, seed=0)
        fit(model, dataset.train_loader(64, seed=0), base)
        dense = acc(model, dataset)
        prune_and_retrain(model, method, dataset, base, schedule="iterative", rounds=2, finetune_epochs=2, lr_factor=0.3)
        rows = han_table(model, dataset.test_loader())
        text += (f"\n### {arch}: dense {dense:.2f}% -> pruned {acc(model, dataset):.2f}% (test)\n\n"
                 + table(["Layer", "Weights", "FLOP", "Act%", "Weights%", "FLOP%"], format_table(rows))
                 + f"\nHan 2015 (Act% / Weights% / FLOP%): {HAN[arch]}.\n")
    return text


def l1_penalty(lam: float):
    def penalty(model: torch.nn.Module) -> torch.Tensor:
        return lam * sum(p.abs().sum() for name, p in model.named_parameters() if name.endswith("weight") or
                         name.endswith("original"))
    return penalty


def part2(dataset, epochs: int, lam: float) -> tuple[str, dict]:
    base = training_config("lenet300", epochs=epochs, seed=0)
    setups = {"L2": (base, []), "L1": (replace(base, weight_decay=0.0), [l1_penalty(lam)])}
    curves: dict[str, list[float]] = {}
    dense_acc = {}
    for reg, (config, regularizers) in setups.items():
        torch.manual_seed(0)
        dense = build_model("lenet300", dataset.in_shape, dataset.num_classes)
        fit(dense, dataset.train_loader(64, seed=0), config, regularizers=regularizers)
        dense_acc[reg] = acc(dense, dataset)
        plain, retrained = [], []
        for s in SPARSITIES:
            model = copy.deepcopy(dense)
            run_method(model, MagnitudePrune(sparsity=s, scope="global"))
            plain.append(acc(model, dataset))
            fit(model, dataset.train_loader(64, seed=1), replace(config, epochs=1, lr=config.lr * 0.1),
                regularizers=regularizers)
            retrained.append(acc(model, dataset))
            print(reg, s, plain[-1], retrained[-1], flush=True)
        curves[f"{reg} regularization w/o retrain"] = plain
        curves[f"{reg} regularization w/ retrain"] = retrained
    rows = [[f"{100 * s:.1f}%", *[f"{curves[k][i]:.2f}" for k in curves]] for i, s in enumerate(SPARSITIES)]
    text = (f"\nDense accuracy: L2 {dense_acc['L2']:.2f}%, L1 {dense_acc['L1']:.2f}% (lambda = {lam:g} x sum |w|).\n\n"
            + table(["parameters pruned", *curves], rows))
    return text, {"curves": curves, "dense": dense_acc}


def plot(data: dict, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    styles = {"L2 regularization w/o retrain": ("tab:orange", "--"), "L1 regularization w/o retrain": ("tab:blue", "--"),
              "L2 regularization w/ retrain": ("tab:orange", "-"), "L1 regularization w/ retrain": ("tab:blue", "-")}
    xs = [100 * s for s in SPARSITIES]
    for label, accs in data["curves"].items():
        color, line = styles[label]
        ax.plot(xs, accs, color=color, linestyle=line, marker="o", markersize=3, label=label)
    ax.axhline(data["dense"]["L2"], color="grey", linestyle=":", linewidth=0.8, label="dense (L2)")
    ax.set_xlabel("parameters pruned away (%)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("LeNet-300-100 on mnist-10k: accuracy vs parameters pruned")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--l1", type=float, default=1e-5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dataset = load_dataset("mnist-10k", MNIST_DIR)
    load = os.getloadavg()
    text = header("Han 2015 per-layer table and accuracy vs parameters pruned (L1 vs L2), mnist-10k")
    text += (f"\nLoad average at start {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (shared 2-core VM); torch threads "
             f"{args.threads}. **Reduced budget**: dense training {args.epochs} epochs with the zoo's config (recommended: "
             "20 / 15); see the script's docstring for the pruning and retraining budgets. One seed.\n\n"
             "Act% = non-zero activations as the next weight layer reads them (after ReLU and pooling; the last "
             "layer's own output); FLOP% = Weights% x previous layer's Act% (first layer: dense input), as in Han's "
             "table; totals pool weights and FLOPs, Act% weighted by activation count.\n")
    text += "\n## Per-layer table (Han 2015 Tables 2-3)\n" + part1(dataset, args.epochs)
    curve_text, data = part2(dataset, args.epochs, args.l1)
    png = RESULTS / "han_accuracy_vs_pruned.png"
    plot(data, png)
    text += ("\n## Accuracy vs parameters pruned, L1 vs L2 (Han 2015 Fig. 5)\n\n"
             "Han's finding (seed 003): L1 is better without retraining, L2 is better with retraining; ~2x compression "
             f"is free without retraining. Plot: `{png.name}`.\n" + curve_text)
    write_results("han_table", text)


if __name__ == "__main__":
    main()
