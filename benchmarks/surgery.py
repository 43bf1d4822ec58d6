"""Dynamic network surgery vs gradual (AGP) pruning at the allocator's frontier setting (issue 16).

Usage: nice -n 10 python benchmarks/surgery.py --seed 0 [--threads 1]   (one process per seed)
       python benchmarks/surgery.py --report --seeds 3                   -> results/surgery.md

For LeNet-300-100 and one seed: the densities and bits the allocator chose for 70x in
benchmarks/frontier.py (runs/frontier/), reached by DNS (prune + splice, `prune/surgery.py`) over the
very training phase AGP had (same epochs, learning rate, schedule, loader seed: same optimizer steps),
then the same weight sharing, codebook fine-tuning and .nnc coding. Accuracy of the decoded file vs
the AGP row of frontier.md and the same-budget dense control of honest.md.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
from pathlib import Path

import torch

from common import MNIST_DIR, header, table, write_results
from frontier import CACHE as FRONTIER_CACHE, HAND, honest_seed
from pruning import SETTINGS
from nncompress.analysis.metrics import count_params
from nncompress.flows.control import StepCounter, pruning_phases, total_steps
from nncompress.flows.deep_compression import DeepCompressionConfig, share_and_encode
from nncompress.flows.prune import dense_model
from nncompress.prune.surgery import DynamicSurgery, finish_surgery_
from nncompress.train import evaluate

CACHE = Path(__file__).resolve().parents[1] / "runs" / "surgery"
ROW = "auto @ 70x"


def run(seed: int, threads: int) -> dict:
    test = __import__("nncompress.zoo", fromlist=["load_dataset"]).load_dataset("mnist-10k", MNIST_DIR)
    val = test.with_validation(1000)
    agp = json.loads((FRONTIER_CACHE / f"lenet300-seed{seed}-threads{threads}.json").read_text())["rows"][ROW]
    dense, _, base = dense_model("lenet300", val, seed)
    s = SETTINGS["lenet300"]
    phases = pruning_phases(base, schedule=s["schedule"], rounds=s["rounds"], finetune_epochs=s["finetune_epochs"],
                            lr_factor=s["lr_factor"])
    model = copy.deepcopy(dense)
    surgery = DynamicSurgery(model, agp["densities"], frequency=max(total_steps(phases, val) // 400, 1), seed=seed)
    with StepCounter() as steps:
        for phase in phases:
            phase.run(model, val, on_step=surgery, progress=False, log=lambda _m: None)
    densities = finish_surgery_(model)
    decoded, r = share_and_encode(model, "lenet300", val, DeepCompressionConfig(bits=agp["bits"], codebook_epochs=3),
                                  seed=seed)
    assert r["exact_roundtrip"]
    return {"seed": seed, "val": evaluate(decoded, val.test_loader())["accuracy"],
            "test": evaluate(decoded, test.test_loader())["accuracy"], "file_bytes": r["file_bytes"],
            "compression": 4 * count_params(dense) / r["file_bytes"], "densities": densities, "steps": steps.steps,
            "updates": surgery.updates, "agp": agp}


def report(seeds: int, threads: int) -> None:
    rows, dns, agp, control = [], [], [], []
    for seed in range(seeds):
        r = json.loads((CACHE / f"lenet300-seed{seed}-threads{threads}.json").read_text())
        c = honest_seed("lenet300", seed, threads)["rows"][HAND]["control"]
        dns.append(r)
        agp.append(r["agp"])
        control.append(c)
        for label, x in (("AGP (frontier.md)", r["agp"]), ("DNS", r)):
            rows.append(["lenet300", seed, label, f"{x['file_bytes']:,}", f"{x['compression']:.1f}x", f"{100 * x['val']:.2f}",
                         f"{100 * x['test']:.2f}", f"{100 * (x['test'] - c['test']):+.2f}"])
    for label, xs in (("AGP", agp), ("DNS", dns)):
        rows.append(["lenet300", "mean", label, f"{statistics.mean(x['file_bytes'] for x in xs):,.0f}",
                     f"{statistics.mean(x['compression'] for x in xs):.1f}x", f"{100 * statistics.mean(x['val'] for x in xs):.2f}",
                     f"{100 * statistics.mean(x['test'] for x in xs):.2f}",
                     f"**{100 * statistics.mean(x['test'] - c['test'] for x, c in zip(xs, control)):+.2f}**"])
    text = header(f"Dynamic network surgery vs AGP at the 70x allocation, LeNet-300-100, {seeds} seeds") + "\n"
    text += ("Same densities and bits (the allocator's 70x plan of each seed), same training phase (AGP's 40 epochs "
             "at the original LR: the same optimizer steps), same codebook fine-tuning; DNS masks updated every "
             "steps/400 steps with probability (1 + 1e-4 t)^-1, hysteresis +-10% around the density's |w| quantile. "
             "Gap vs the same-budget dense control (honest.md).\n\n")
    text += table(["model", "seed", "pruning", "file B", "compression", "val %", "test %", "test gap vs control"], rows)
    write_results("surgery", text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--report", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.report:
        return report(args.seeds, args.threads)
    result = run(args.seed, args.threads)
    CACHE.mkdir(parents=True, exist_ok=True)
    (CACHE / f"lenet300-seed{args.seed}-threads{args.threads}.json").write_text(json.dumps(result, indent=1))
    print({k: result[k] for k in ("val", "test", "file_bytes", "compression", "updates", "steps")})


if __name__ == "__main__":
    main()
