"""Pruning with retraining on mnist-10k (Han et al. 2015 tables), dense and pruned in the same run.

Each row is one run of the shipped recipe (recipes/han2015-lenet300.yaml, han2015-lenet5.yaml) with
the seed overridden: `nncompress run recipes/han2015-lenet300.yaml --dataset mnist-10k` gives seed 0.

Usage:
  python benchmarks/pruning.py                      # test split, 3 seeds, both LeNets -> results/pruning.md
  python benchmarks/pruning.py --val --seeds 1      # tune on a validation split (last 1,000 training images)
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch

from common import MNIST_DIR, header, table, write_results
from nncompress.recipes import Recipe, load_recipe, run_recipe
from nncompress.recipes.schema import edited, stage_index
from nncompress.zoo import load_dataset

#: The rows run the shipped recipes (recipes/han2015-*.yaml) through the recipe runner: the same
#: settings as `nncompress prune` (flows.prune.RECOMMENDED_PRUNING, chosen on the validation split,
#: 3 seeds, never on test accuracy). LeNet-300-100: Han's per-layer densities (8/8/26%) reached with
#: AGP over a full-length retraining at the original learning rate; iterative pruning at 1/10 or
#: 3/10 of the LR lost 0.2-1.0 points on the validation split with 7,000 training images (the paper
#: retrains on 60,000).
RECIPES = Path(__file__).resolve().parents[1] / "recipes"
RECIPE_FILES = {"lenet300": "han2015-lenet300.yaml", "lenet5": "han2015-lenet5.yaml"}


def recipe(arch: str, overrides: dict | None = None) -> Recipe:
    """The arch's shipped pruning recipe, with prune-stage options / method fields overridden (tuning)."""
    base = load_recipe(RECIPES / RECIPE_FILES[arch])
    index = stage_index(base, "prune")
    return edited(base, {("stages", index, "prune", key): value for key, value in (overrides or {}).items()})


def settings(arch: str) -> dict:
    """The prune stage of the arch's recipe as {method, schedule, rounds, finetune_epochs, lr_factor}."""
    r = recipe(arch)
    stage = r.stages[stage_index(r, "prune")]
    return dict(method=stage.method_spec(), schedule=stage.schedule, rounds=stage.rounds,
                finetune_epochs=stage.finetune_epochs, lr_factor=stage.lr_factor)


SETTINGS = {arch: settings(arch) for arch in RECIPE_FILES}


def run_model(arch: str, dataset, seeds: int, overrides: dict) -> tuple[list[list[object]], list[dict]]:
    results = []
    with tempfile.TemporaryDirectory() as folder:
        for seed in range(seeds):
            run = run_recipe(recipe(arch, overrides), dataset, Path(folder) / f"{arch}-{seed}", seed=seed)
            s = run["summary"]
            r = {"seed": seed, "dense_accuracy": s["dense_accuracy"], "pruned_accuracy": s["test_accuracy"],
                 "nonzero_weights": s["nonzero_weights"], "compression": s["weight_compression"],
                 "densities": s["densities"]}
            results.append(r)
            print(f"{arch} seed {seed}: dense {r['dense_accuracy']:.4f} pruned {r['pruned_accuracy']:.4f} "
                  f"compression {r['compression']:.2f}x densities {r['densities']}", flush=True)
    rows = [[arch, r["seed"], f"{100 * r['dense_accuracy']:.2f}", f"{100 * r['pruned_accuracy']:.2f}",
             f"{100 * (r['pruned_accuracy'] - r['dense_accuracy']):+.2f}", f"{r['nonzero_weights']:,}",
             f"{r['compression']:.1f}x"] for r in results]
    gap = statistics.mean(r["pruned_accuracy"] - r["dense_accuracy"] for r in results)
    rows.append([f"**{arch} mean**", "", f"{100 * statistics.mean(r['dense_accuracy'] for r in results):.2f}",
                 f"{100 * statistics.mean(r['pruned_accuracy'] for r in results):.2f}", f"**{100 * gap:+.2f}**",
                 "", f"{statistics.mean(r['compression'] for r in results):.1f}x"])
    return rows, results


def density_table(all_results: dict[str, list[dict]]) -> str:
    rows = []
    han = {"lenet300": {"fc1": 8, "fc2": 9, "fc3": 26}, "lenet5": {"conv1": 66, "conv2": 12, "fc1": 8, "fc2": 19}}
    for arch, results in all_results.items():
        for layer in results[0]["densities"]:
            mean = statistics.mean(r["densities"][layer] for r in results)
            rows.append([arch, layer, f"{100 * mean:.1f}%", f"{han.get(arch, {}).get(layer, '-')}%"])
    return table(["model", "layer", "weights kept (ours, mean)", "Han 2015"], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--models", nargs="+", default=list(SETTINGS))
    parser.add_argument("--val", action="store_true", help="evaluate on the last 1,000 training images")
    parser.add_argument("--sparsity", type=float, help="override the target sparsity (tuning)")
    parser.add_argument("--finetune-epochs", type=int, help="override (tuning)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    dataset = load_dataset("mnist-10k", MNIST_DIR)
    if args.val:
        dataset = dataset.with_validation(1000)
    rows, all_results = [], {}
    for arch in args.models:
        overrides: dict = {}
        if args.sparsity is not None:
            overrides["sparsity"] = args.sparsity
        if args.finetune_epochs is not None:
            overrides["finetune_epochs"] = args.finetune_epochs
        arch_rows, all_results[arch] = run_model(arch, dataset, args.seeds, overrides)
        rows += arch_rows
    split = "validation (last 1,000 of the 8,000 training images)" if args.val else "test (2,000 images)"
    text = header(f"Magnitude pruning with retraining on mnist-10k, {split}") + "\n"
    text += "Settings: " + "; ".join(f"{a}: {SETTINGS[a]}" for a in args.models) + "\n\n"
    text += table(["model", "seed", "dense acc %", "pruned acc %", "gap (points)", "non-zero weights",
                   "compression"], rows)
    text += "\n### Weights kept per layer\n\n" + density_table(all_results)
    write_results("pruning_val" if args.val else "pruning", text)


if __name__ == "__main__":
    main()
