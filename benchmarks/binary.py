"""Binary and ternary networks on mnist-10k (issue 14), in the layout of the lecture's result tables
(lecture 003: method, bit-width W/A, accuracy) plus the weight memory saving counted in real bytes.

Per seed: train the float model, then for each method binarize a copy of it, fine-tune, evaluate,
`convert_` and save it (the file size is measured), all in one process so the float baseline and
the compressed models share the seed. Seeds run in parallel processes (one torch thread each);
each seed's figures are cached in runs/binary/ and the table is built from every cached seed.

    python benchmarks/binary.py --model lenet5 --seeds 0 1 2 --float-epochs 10 --epochs 4
    python benchmarks/binary.py --model resnet20 --seeds 0 --float-epochs 3 --epochs 1
"""
from __future__ import annotations

import argparse
import copy
import json
import multiprocessing
import os
import shlex
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import MNIST_DIR, RESULTS, header, table, trained_float, write_results  # noqa: E402

CACHE = Path(__file__).resolve().parents[1] / "runs" / "binary"
CONTROL = "float control"  # the float model fine-tuned with the variants' budget, no binarization
#: (label, CLI method, options, W/A bits) in the lecture's order
VARIANTS = [
    ("BinaryConnect (det.)", "bc", {}, "1/32"),
    ("BinaryConnect (stoch.)", "bc", {"stochastic": True}, "1/32"),
    ("BNN", "bnn", {}, "1/1"),
    ("BWN", "bwn", {}, "1/32"),
    ("XNOR-Net", "xnor", {}, "1/1"),
    ("TWN", "twn", {}, "2/32"),
    ("TTQ", "ttq", {}, "2/32"),
    ("LQ-Net W2", "lqnet", {"weight_bits": 2}, "2/32"),
    ("LQ-Net W2A2", "lqnet", {"weight_bits": 2, "act_bits": 2}, "2/2"),
]


def run_seed(arch: str, seed: int, float_epochs: int, epochs: int, only: list[str] | None, tag: str = "",
             subset: int | None = None, command: str = "") -> dict:
    """Float model + every variant for one seed (runs in its own process, one torch thread);
    `subset`: train on the first `subset` training images only (the test set stays whole)."""
    torch.set_num_threads(1)
    from nncompress.api import training_config
    from nncompress.flows.binary import binarize_and_train, binary_method, finetune_config, measure_binary
    from nncompress.train import evaluate, fit
    from nncompress.zoo import build_model, load_dataset

    dataset = load_dataset("mnist-10k", MNIST_DIR)
    if subset:
        dataset = replace(dataset, train_x=dataset.train_x[:subset], train_y=dataset.train_y[:subset])
    load_start = os.getloadavg()[0]
    base = training_config(arch, epochs=float_epochs, seed=seed)
    if subset:
        torch.manual_seed(seed)
        model = build_model(arch, dataset.in_shape, dataset.num_classes)
        began = time.perf_counter()
        fit(model, dataset.train_loader(64, seed=seed), base, progress=False, log=lambda msg: None)
        seconds = time.perf_counter() - began
    else:  # the whole training split: the float model other benchmarks of this seed share (cached)
        model, seconds = trained_float(arch, dataset, seed, float_epochs)
    rows = {"float": {"test_accuracy": evaluate(model, dataset.test_loader())["accuracy"], "seconds": seconds}}
    control = copy.deepcopy(model)  # the same-budget control: the float model fine-tuned like every variant
    fit(control, dataset.train_loader(64, seed=seed), finetune_config(base, epochs, seed), progress=False,
        log=lambda msg: None)
    rows[CONTROL] = {"test_accuracy": evaluate(control, dataset.test_loader())["accuracy"]}
    for label, name, options, _ in VARIANTS:
        if only and label not in only:
            continue
        method = binary_method(name, seed=seed, **options)
        binary = copy.deepcopy(model)
        torch.manual_seed(seed)
        began = time.perf_counter()
        binarize_and_train(binary, method, dataset, finetune_config(base, epochs, seed))
        seconds = time.perf_counter() - began
        rows[label] = {**measure_binary(model, binary, method, arch, dataset), "seconds": seconds}
        print(f"[{arch} seed {seed}] {label}: {rows[label]['test_accuracy']:.4f} ({seconds:.0f} s)", flush=True)
    result = {"arch": arch, "seed": seed, "float_epochs": float_epochs, "epochs": epochs, "rows": rows,
              "torch_threads": torch.get_num_threads(), "train_images": len(dataset.train_x), "command": command,
              "load": [load_start, os.getloadavg()[0]]}
    CACHE.mkdir(parents=True, exist_ok=True)
    (CACHE / f"{arch}_seed{seed}{'_' + tag if tag else ''}.json").write_text(json.dumps(result, indent=1))
    return result


def _mean_std(values: list[float]) -> str:
    mean = 100 * statistics.mean(values)
    return f"{mean:.2f} ± {100 * statistics.stdev(values):.2f}" if len(values) > 1 else f"{mean:.2f}"


def model_table(results: list[dict]) -> str:
    """One table per model: accuracy (mean ± std over seeds), gap to float, savings in real bytes."""
    first = results[0]
    float_acc = [r["rows"]["float"]["test_accuracy"] for r in results]
    loads = [x for r in results for x in r.get("load", [])]
    lines = [f"\n## {first['arch']} on mnist-10k: seeds {', '.join(str(r['seed']) for r in results)}; float "
             f"{first['float_epochs']} epochs{'' if first['float_epochs'] >= 15 else ' (reduced budget)'}, each method fine-tunes the same float model {first['epochs']} epoch(s); "
             f"{first.get('train_images', 8000):,} training images, 2,000 test images\n\n"
             f"Command{'s' if len(first['commands']) > 1 else ''}: "
             f"{'; '.join(f'`{c}`' for c in dict.fromkeys(c for r in results for c in r['commands']))}. "
             f"Machine load (1-min average) during the runs "
             f"{min(loads, default=float('nan')):.0f}-{max(loads, default=float('nan')):.0f}.\n\n"]
    controlled = all(CONTROL in r["rows"] for r in results)
    rows = [["float (full precision)", "32/32", _mean_std(float_acc), "", *([""] if controlled else []), "1.0x", "1.0x", ""]]
    if controlled:
        rows.append([f"float control (+{first['epochs']} fine-tuning epochs)", "32/32",
                     _mean_std([r["rows"][CONTROL]["test_accuracy"] for r in results]), "", "", "1.0x", "1.0x", ""])
    for label, _, _, bits in VARIANTS:
        got = [r["rows"][label] for r in results if label in r["rows"]]
        if len(got) != len(results):
            continue
        gaps = {base: [100 * (g["test_accuracy"] - r["rows"][base]["test_accuracy"]) for g, r in zip(got, results)]
                for base in ("float", *([CONTROL] if controlled else []))}
        exact = all(g["converted_accuracy"] == g["test_accuracy"] for g in got)
        rows.append([label, bits, _mean_std([g["test_accuracy"] for g in got]),
                     *(f"{statistics.mean(v):+.2f}" for v in gaps.values()),
                     f"{got[0]['weight_saving']:.1f}x", f"{got[0]['file_saving']:.1f}x ({got[0]['file_bytes']:,} B)",
                     "yes" if exact else "NO"])
    lines.append(table(["method", "W/A bits", "test acc % (mean ± std)", "gap to float (points, mean)",
                        *(["gap to float control (points, mean)"] if controlled else []),
                        "weight memory saving", "file saving (saved bytes)", "converted = simulated"], rows))
    return "".join(lines)


def render(load: tuple[float, float]) -> str:
    text = header("Binary and ternary networks (issue 14)")
    text += (f"Machine load (1-min load average, 2 cores shared with other sessions, last command): {load[0]:.1f} at "
             f"start, {load[1]:.1f} at the end; one torch thread per process (seeds, or one seed's variants, in "
             "parallel processes). Budgets are stated per table; the float recipe has 15 epochs for both models, and "
             "tables trained for fewer say so ('reduced budget'). Where a table has a 'float control' row, the "
             "float model was also fine-tuned with the variants' budget and no binarization: the gap to it is "
             "the effect of binarization alone, not of extra training.\n\n"
             "Protocol: train the float model, then binarize a copy with each method and fine-tune it with the "
             "float recipe's optimizer (SGD momentum 0.9, cosine LR, weight decay 1e-4), BinaryConnect / BNN "
             "accumulators clipped to [-H, H] after every step; settings fixed in advance (nothing chosen on test "
             "accuracy). Weight memory saving: float32 weight bytes / stored weight bytes after `convert_` (codes "
             "bit-packed: 1 bit binary, 2 bits ternary and LQ W2, + scales / levels / bases; biases and BatchNorm "
             "left out). File saving: float `save_model` file / converted file, real bytes (headers, biases, "
             "the binarized blocks' BatchNorms and full-precision first/last layers of XNOR-Net included).\n")
    merged: dict[tuple[str, int], dict] = {}  # runs of one seed split over processes (--tag) share the float model
    for path in sorted(CACHE.glob("*_seed*.json")):
        result = json.loads(path.read_text())
        key = (result["arch"], result["seed"])
        result["commands"] = [result.get("command", "")]
        if key in merged:
            merged[key]["rows"].update(result["rows"])
            merged[key]["commands"] += result["commands"]
            merged[key]["load"] = merged[key].get("load", []) + result.get("load", [])
        else:
            merged[key] = result
    by_arch: dict[str, list[dict]] = {}
    for result in merged.values():
        by_arch.setdefault(result["arch"], []).append(result)
    previous = previous_sections(RESULTS / "binary.md")
    for arch in ("lenet5", "resnet20"):
        if arch in by_arch:
            text += model_table(sorted(by_arch[arch], key=lambda r: r["seed"]))
        elif arch in previous:
            text += previous[arch]
    return text


def previous_sections(path: Path) -> dict[str, str]:
    """The per-model sections ('## <arch> on ...' to the next one) of an existing binary.md, by
    arch: a model whose per-seed cache (runs/binary/) is gone keeps its table when another is re-run."""
    if not path.is_file():
        return {}
    parts = path.read_text().split("\n## ")[1:]
    return {part.split(" ", 1)[0]: "\n## " + part.rstrip("\n") + "\n" for part in parts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="lenet5", choices=["lenet5", "resnet20"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--float-epochs", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--only", nargs="*", help="variant labels to run (default: all)")
    parser.add_argument("--subset", type=int, default=None, help="train on the first N training images only")
    parser.add_argument("--tag", default="", help="cache name suffix: one seed's variants split over processes")
    parser.add_argument("--render-only", action="store_true", help="rebuild the table from runs/binary/")
    args = parser.parse_args()
    torch.set_num_threads(1)  # the header records it; each seed process pins its own
    load_start = os.getloadavg()[0]
    if not args.render_only:
        with multiprocessing.get_context("spawn").Pool(len(args.seeds)) as pool:
            command = "python " + " ".join(shlex.quote(a) for a in [f"benchmarks/{Path(sys.argv[0]).name}", *sys.argv[1:]])
            pool.starmap(run_seed, [(args.model, s, args.float_epochs, args.epochs, args.only, args.tag, args.subset,
                                     command) for s in args.seeds])
    write_results("binary", render((load_start, os.getloadavg()[0])))


if __name__ == "__main__":
    main()
