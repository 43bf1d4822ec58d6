"""The automatic allocation of issue 16 on the conv nets: ResNet-20 and the small VGG, a rate-accuracy table.

Usage: python benchmarks/frontier_convnets.py --models resnet20 --seeds 0 --ratios 8 16 32 64
       [--finetune-epochs 2] [--codebook-epochs 2] [--store runs/frontier_convnets/resnet20_s0.json]
       python benchmarks/frontier_convnets.py --merge STORE [STORE ...]     # -> results/frontier_convnets.md

No target here (the issue: "report what it reaches within 0.5 points"). Per model and seed, on mnist-10k
(train 8,000 / test 2,000): the float model of the zoo recipe (cached, shared with qat.py / binary.py),
one allocation table (each layer's (density, bits) candidates: exact bytes with the real codecs and
the loss increase on training images, flows/allocation_table.py) reused for every ratio, then per
target ratio exactly what `nncompress deep-compress MODEL --target-ratio R` runs (flows/allocate.py
`compress_to_budget`: prune with retraining, k-means codebooks, fine-tune them, write the .nnc, lower
bits until the file fits). The file is written, read back and decoded; its accuracy is the decoded
model's. The same-budget control is the float model trained through the same phases with no
compression (flows/control.py), so a gap is compression's, not extra training's.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from common import MNIST_DIR, header, table, trained_float, write_results
from nncompress.analysis.metrics import count_params
from nncompress.api import training_config
from nncompress.flows.allocate import AllocationConfig, compress_to_budget, compression_phases
from nncompress.flows.allocation_table import Candidate, measure_table
from nncompress.flows.control import same_budget_control
from nncompress.train import evaluate
from nncompress.validate import UserError
from nncompress.zoo import load_dataset


def cached_table(arch: str, seed: int, float_epochs: int, settings: dict, measure) -> dict[str, list[Candidate]]:
    """The allocation table of this float model and sensitivity setting, measured once (tens of
    minutes on ResNet-20) and kept in runs/frontier_convnets/ for later ratios and runs."""
    path = (Path(__file__).resolve().parents[1] / "runs" / "frontier_convnets" /
            f"table-{arch}-s{seed}-{float_epochs}ep-{settings['sensitivity_images']}img.json")
    if path.is_file():
        return {name: [Candidate(**c) for c in rows] for name, rows in json.loads(path.read_text()).items()}
    grid = measure()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({name: [dataclasses.asdict(c) for c in rows] for name, rows in grid.items()}))
    return grid


def run_seed(arch: str, data, seed: int, ratios: list[float], float_epochs: int, settings: dict,
             save=lambda run: None) -> dict:
    """One model and seed: the table, the control, then every ratio (`save(run)` after each; a ratio
    whose file cannot fit its budget is recorded as such)."""
    dense, _ = trained_float(arch, data, seed, float_epochs)
    dense.eval()
    base = training_config(arch, seed=seed, epochs=float_epochs)
    began = time.perf_counter()
    grid = cached_table(arch, seed, float_epochs, settings,
                        lambda: measure_table(dense, data, AllocationConfig(target_ratio=1.0, **settings), base))
    table_s = time.perf_counter() - began
    control, info = same_budget_control(dense, data, compression_phases(base, AllocationConfig(target_ratio=1.0, **settings), seed))
    out = {"arch": arch, "seed": seed, "float": evaluate(dense, data.test_loader())["accuracy"],
           "control": evaluate(control, data.test_loader())["accuracy"], "control_steps": info["steps"],
           "table_seconds": table_s, "params": count_params(dense), "rows": [],
           "sizes": {name: int(module.weight.numel()) for name, module in dense.named_modules() if name in grid}}
    for ratio in ratios:
        began = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"{arch}.nnc"
            try:
                decoded, r = compress_to_budget(copy.deepcopy(dense), arch, data, base,
                                                AllocationConfig(target_ratio=ratio, **settings), seed=seed, out=path, table=grid)
            except UserError as err:  # the written file stayed over the budget after every try
                out["failed"] = out.get("failed", []) + [{"target": ratio, "error": str(err)}]
                save(out)
                continue
            assert r["exact_roundtrip"] and os.path.getsize(path) == r["file_bytes"] <= r["budget_bytes"], r["tries"]
        row = {"target": ratio, "file_bytes": r["file_bytes"], "compression": 4 * out["params"] / r["file_bytes"],
               "accuracy": evaluate(decoded, data.test_loader())["accuracy"], "pruned_accuracy": r["pruned_accuracy"],
               "densities": r["densities"], "bits": r["bits"], "tries": len(r["tries"]),
               "seconds": time.perf_counter() - began}
        out["rows"].append(row)
        print(json.dumps({"arch": arch, "seed": seed, **{k: v for k, v in row.items() if k not in ("densities", "bits")}}),
              flush=True)
        save(out)
    return out


def weighted(values: dict[str, float], sizes: dict[str, int]) -> float:
    return sum(values[n] * sizes[n] for n in values) / sum(sizes[n] for n in values)


def report(store: dict) -> str:
    lines = [store["header"], "", store["note"], ""]
    rows, reached = [], {}
    for run in store["runs"]:
        for r in run["rows"]:
            gap = 100 * (r["accuracy"] - run["control"])
            rows.append([run["arch"], run["seed"], f"{r['target']:g}x", f"{r['file_bytes']:,}", f"{r['compression']:.1f}x",
                         f"{100 * weighted(r['densities'], run['sizes']):.1f}%" if "densities" in r else "-",
                         ", ".join(f"{n} {100 * d:.0f}%/{r['bits'][n]}b" for n, d in r["densities"].items())
                         if "densities" in r else "- (not kept)",
                         f"{100 * run['float']:.2f}", f"{100 * run['control']:.2f}", f"{100 * r['accuracy']:.2f}",
                         f"**{gap:+.2f}**"])
            if gap >= -0.5:
                reached[run["arch"], run["seed"]] = max(reached.get((run["arch"], run["seed"]), 0.0), r["compression"])
    lines.append(table(["model", "seed", "target", "file B", "compression", "weights kept", "allocation (density / bits)",
                        "float %", "control %", "decoded file %", "gap vs control"], rows))
    for run in store["runs"]:
        for failed in run.get("failed", []):
            lines.append(f"- {run['arch']} seed {run['seed']} at {failed['target']:g}x: no file within the budget "
                         f"({failed['error']})")
    lines.append("\nHighest compression within 0.5 points of the same-budget control: " + ("; ".join(
        f"{arch} seed {seed}: **{ratio:.1f}x**" for (arch, seed), ratio in sorted(reached.items())) or "none") + ".\n")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+", default=["resnet20"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--ratios", nargs="+", type=float, default=[8, 16, 32, 64])
    parser.add_argument("--float-epochs", type=int, default=15)
    parser.add_argument("--finetune-epochs", type=int, default=2, help="per iterative pruning round (3 rounds)")
    parser.add_argument("--codebook-epochs", type=int, default=2)
    parser.add_argument("--sensitivity-images", type=int, default=512)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--store", default="runs/frontier_convnets/store.json")
    parser.add_argument("--merge", nargs="+", help="only rebuild the results file from these stores")
    parser.add_argument("--note", default="")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.merge:
        stores = [json.loads(Path(p).read_text()) for p in args.merge]
        merged = {"header": header("Automatic allocation on the conv nets: rate vs accuracy (issue 16)"),
                  "note": args.note + "\n\n" + "\n\n".join("Run: " + s["header"].split("\n")[2] for s in stores),
                  "runs": [run for s in stores for run in s["runs"]]}
        write_results("frontier_convnets", report(merged))
        return
    data = load_dataset("mnist-10k", MNIST_DIR)
    settings = dict(finetune_epochs=args.finetune_epochs, codebook_epochs=args.codebook_epochs,
                    sensitivity_images=args.sensitivity_images)
    store, done = Path(args.store), []
    store.parent.mkdir(parents=True, exist_ok=True)

    def save(current: dict) -> None:  # rewritten after every ratio: a stopped run keeps what it finished
        store.write_text(json.dumps({"header": header("frontier_convnets run"), "runs": done + [current],
                                     "settings": settings, "load": os.getloadavg()}, indent=1))

    for arch in args.models:
        for seed in args.seeds:
            done.append(run_seed(arch, data, seed, args.ratios, args.float_epochs, settings, save))
    print(f"wrote {store}")


if __name__ == "__main__":
    main()
