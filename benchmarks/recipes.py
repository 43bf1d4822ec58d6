"""The shipped recipes (recipes/*.yaml) run exactly as `nncompress run` runs them (seed 0), each next
to the published row it reproduces.

Usage:
  python benchmarks/recipes.py                          # every shipped recipe, one torch thread -> results/recipes.md
  python benchmarks/recipes.py --recipes han2015-lenet300 deep-compression-lenet300 --runs runs/recipes
  python benchmarks/recipes.py --render-only --runs DIR # table from DIR/<recipe>/result.json (finished runs)
Each recipe runs in RUNS/<name> with its stage checkpoints, so an interrupted benchmark resumes where
it stopped (--resume semantics: same figures).
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

from common import MNIST_DIR, header, table, write_results
from nncompress.recipes import load_recipe, run_recipe
from nncompress.zoo import load_dataset

RECIPES = Path(__file__).resolve().parents[1] / "recipes"

#: The published figures each recipe reproduces (copied from the results files named).
PUBLISHED = {
    "han2015-lenet300": "pruning.md: 97.38 -> 97.83 (+0.45, seeds +0.30 / +0.50 / +0.55), 12.4x",
    "han2015-lenet5": "pruning.md: 98.98 -> 98.88 (-0.10, seeds -0.05 / -0.15 / -0.10), 13.3x",
    "deep-compression-lenet300": "deep_compression.md: 97.52 -> 97.87 (+0.35, worst +0.20), 24,724 B, 43.1x",
    "deep-compression-lenet300-fewest": "deep_compression.md (conv 4 / fc 2): 97.52 -> 97.75 (+0.23, worst -0.05), 17,456 B, 61.1x",
    "deep-compression-lenet5": "deep_compression.md: 98.98 -> 98.93 (-0.05, worst -0.10), 42,399 B, 40.7x",
    "deep-compression-lenet5-fewest": "deep_compression.md (conv 4 / fc 2): 98.98 -> 98.85 (-0.13, worst -0.20), 29,014 B, 59.4x",
    "ptq-int8-lenet5": "ptq.md (one float model): 98.95 -> 98.90 (-0.05); ptq_vs_torch.md 10 seeds: 99.03 -> 99.04",
    "ptq-int8-resnet20": "ptq.md (one float model): 99.15 -> 99.10 (-0.05); ptq_vs_torch.md 10 seeds: 99.15 -> 99.15",
    "nm-2of4-lenet300": "nm_sparsity.md seed 0: 96.70 -> 97.35 (+0.65; mean +0.37)",
    "ttq-lenet5": "binary.md (3 seeds): 98.47 ± 0.26 -> 98.15 ± 0.17 (-0.32), weights 16.0x, file 15.4x",
    "allocate-lenet5-170x": "frontier_compact_header.md (3 seeds, 7,000 images): 171.7x, -0.18 ± 0.04 vs control",
    "soft-sharing-lenet5": "soft_sharing_lenet5_200x.md (3 seeds, 7,000 images): 203.5x, -0.17 ± 0.07 vs control",
    "soft-sharing-lenet300": "soft_sharing.md (3 seeds, 7,000 images): 129.1x, -1.12 ± 0.28 vs control",
}


def row(name: str, result: dict) -> list[object]:
    s = result["summary"]
    size = (f"{s['compression']:.1f}x ({s['file_bytes']:,} B file)" if "file_bytes" in s else
            f"{1 / s['ratio_vs_float32']:.1f}x (state dict after convert_, {s['state_dict_bytes']:,} B)"
            if "ratio_vs_float32" in s else
            f"{s['weight_compression']:.1f}x ({s['nonzero_weights']:,} weights)" if s.get("weight_compression", 1) > 1.05
            else "-")
    control = (f"{100 * s['control_accuracy']:.2f} ({100 * s['gap_vs_control']:+.2f})" if "control_accuracy" in s
               else "-")
    return [name, f"{100 * s['dense_accuracy']:.2f}", f"{100 * s['test_accuracy']:.2f}", f"{100 * s['gap']:+.2f}", control,
            size, PUBLISHED.get(name, "-")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", nargs="+", default=[p.stem for p in sorted(RECIPES.glob("*.yaml"))])
    parser.add_argument("--runs", default="runs/recipes", help="folder of the runs (one subfolder per recipe)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--render-only", action="store_true", help="only tabulate finished runs in --runs")
    parser.add_argument("--name", default="recipes", help="results file name (default recipes)")
    parser.add_argument("--note", default="", help="a sentence under the results header (e.g. the machine's load)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows, load = [], os.getloadavg()[0]
    data = None if args.render_only else load_dataset("mnist-10k", MNIST_DIR)
    for name in args.recipes:
        folder = Path(args.runs) / name
        if args.render_only:
            if not (folder / "result.json").is_file():
                continue
            result = json.loads((folder / "result.json").read_text())
        else:
            result = run_recipe(load_recipe(RECIPES / f"{name}.yaml"), data, folder, resume=True)
        if result["complete"]:
            rows.append(row(name, result))
    text = header("The shipped recipes on mnist-10k (seed 0), next to the published rows") + "\n"
    text += (f"Each row: `nncompress run recipes/<name>.yaml --dataset mnist-10k` (the same stages), seed 0, "
             f"{torch.get_num_threads()} torch thread(s); the published tables ran on 2 threads, so seed 0 differs by "
             f"a few test images (a thread count changes float summation order). Load average at the end: {load:.1f} "
             "(2 cores shared).\n")
    if args.render_only:
        text += (f"Rendered from finished runs in {args.runs}, each made by `OMP_NUM_THREADS={args.threads} nice -n 10 "
                 "nncompress run recipes/<name>.yaml --dataset mnist-10k --data-dir ../shared/data/mnist --out "
                 f"{args.runs}/<name>`.\n")
    if args.note:
        text += f"\n**Note:** {args.note}\n"
    text += "\n"
    text += table(["recipe", "dense acc %", "final acc %", "gap (points)", "same-budget control % (gap)", "compression",
                   "published"], rows)
    write_results(args.name, text)


if __name__ == "__main__":
    main()
