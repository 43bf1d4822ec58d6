"""MIRACLE (minimal random code learning, Havasi et al., ICLR 2019) on the LeNets at the issue's
ratios, in real .nnc bytes, against the same-budget dense control (issue 16's MDL / relative-entropy
coding item, measured beside entropy-penalized reparameterization and the allocator).

Usage: nice -n 10 python benchmarks/miracle.py [--seeds 3] [--models lenet300 lenet5]
           [--ratios lenet300=70,30 lenet5=170,400]
           [--epochs lenet300=20,10,8] [--block-bits 12] [--sampling local|weights] [--threads 1]
           [--name miracle]

Per model and seed, on mnist-10k's first 7,000 training images (the last 1,000 are the validation
split; the 2,000-image test split is evaluated once, never used to choose):
  dense    the very dense model honest.py trained (runs/honest/, same seed, data and threads), or the
           model trained with its recipe (flows.prune.dense_model) when that cache is missing;
  MIRACLE  `flows/minimal_random_code.compress_miracle` at budget = fp32 bytes / ratio: variational
           training (V epochs, one penalty toward the total coding goal), blocks laid out by each
           layer's KL, B epochs with one penalty per block, R rounds of coding 1/R of every layer's
           blocks with one retraining epoch between rounds (Adam: the variational and balance
           epochs under one cosine schedule, the rounds at a constant 0.1 x the rate); biases
           float16; written to .nnc (C-bit indices) and the accuracy is the decoded file's;
  control  the dense model trained through exactly the same phase (flows/control.py: the same
           config, loader seed and steps) with nothing compressed; the gap vs dense (the model
           both start from, with less training) is given too, and the weaker of the two gaps counts.
compression = fp32 parameter bytes / file bytes. Per-seed results are cached in runs/miracle/.
"""
from __future__ import annotations

import argparse
import copy
import statistics
from pathlib import Path

import torch

from common import (MNIST_DIR, RESULTS, accuracies, cached_sweep, gap_cells, header, sweep_cells, sweep_points, table,
                    write_results)
from frontier import plot
from honest import CACHE as HONEST_CACHE
from nncompress.analysis.metrics import count_params
from nncompress.api import resolve_model
from nncompress.flows.control import same_budget_control
from nncompress.flows.distill import DistillConfig
from nncompress.flows.minimal_random_code import MiracleConfig, compress_miracle, miracle_phases
from nncompress.flows.prune import dense_model
from nncompress.zoo import load_dataset

CACHE = Path(__file__).resolve().parents[1] / "runs" / "miracle"


def load_dense(arch: str, val, seed: int):
    """honest.py's dense model of this seed if cached (the one frontier.md's rows start from), else the recipe's."""
    saved = HONEST_CACHE / f"{arch}-seed{seed}-dense.pt"
    if not saved.is_file():
        return dense_model(arch, val, seed)[0].eval()
    model = resolve_model(arch, val, seed=seed)[0]
    model.load_state_dict(torch.load(saved, weights_only=True))
    return model.eval()


def run_seed(arch: str, val, test, seed: int, ratios: list[float], config: MiracleConfig) -> dict:
    dense = load_dense(arch, val, seed)
    control, info = same_budget_control(dense, val, miracle_phases(config, seed), distill=config.distill)
    fp32 = 4 * count_params(dense)
    rows = {}
    for ratio in ratios:
        decoded, r = compress_miracle(copy.deepcopy(dense), arch, val, config, budget_bytes=int(fp32 / ratio), seed=seed)
        rows[f"{ratio:g}"] = {**accuracies(decoded, val, test), "bytes": r["file_bytes"], "budget": r["budget_bytes"],
                              "blocks": r["blocks"], "index_bits": r["index_bits"], "exact": r["exact_roundtrip"]}
        print(arch, seed, ratio, {k: rows[f"{ratio:g}"][k] for k in ("val", "test", "bytes", "blocks")}, flush=True)
    return {"arch": arch, "seed": seed, "dense": accuracies(dense, val, test), "control": accuracies(control, val, test),
            "control_steps": info["steps"], "fp32_bytes": fp32, "rows": rows}


def summary(arch: str, runs: list[dict], ratios: list[float]) -> list[list[object]]:
    out = []
    for ratio in ratios:
        rows, head, tail = sweep_cells(runs, f"{ratio:g}")
        vs_dense = gap_cells([100 * (x["test"] - r["dense"]["test"]) for x, r in zip(rows, runs)])
        bits = statistics.mean(x["index_bits"] / (r["fp32_bytes"] / 4) for x, r in zip(rows, runs))
        blocks = ", ".join(f"{n} {statistics.mean(x['blocks'][n] for x in rows):,.0f}" for n in rows[0]["blocks"])
        out.append([arch, f"{ratio:g}x", *head, f"{bits:.3f}", blocks, *tail[:-1], *vs_dense, tail[-1]])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--start-seed", type=int, default=0, help="compute seeds start..seeds-1 only (parallel runs)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--models", nargs="+", default=["lenet300", "lenet5"])
    parser.add_argument("--ratios", nargs="+", default=["lenet300=70,30", "lenet5=170,400"],
                        help="per model: the compression ratios to code at")
    parser.add_argument("--epochs", nargs="+", default=["lenet300=20,10,8", "lenet5=20,10,8"],
                        help="per model: variational epochs, balance epochs, coding rounds")
    parser.add_argument("--block-bits", type=int, default=12)
    parser.add_argument("--distill-alpha", type=float, default=0.0, help="knowledge distillation from the dense model "
                        "in every MIRACLE epoch (flows/distill.py); the control is then self-distilled the same way")
    parser.add_argument("--distill-temperature", type=float, default=4.0)
    parser.add_argument("--sampling", choices=("local", "weights"), default="local",
                        help="local: the local reparameterization trick (Kingma et al. 2015), each Linear / Conv output "
                        "drawn from its distribution under the posterior (the default); weights: one weight sample "
                        "per batch (the paper's; miracle.md, miracle_2x.md, miracle_3x.md)")
    parser.add_argument("--no-report", action="store_true", help="only fill the per-seed cache")
    parser.add_argument("--name", default="miracle")
    parser.add_argument("--note", default="")
    args = parser.parse_args()
    schedule = {k: tuple(int(x) for x in v.split(",")) for k, v in (e.split("=") for e in args.epochs)}
    targets = {k: [float(x) for x in v.split(",")] for k, v in (e.split("=") for e in args.ratios)}
    torch.set_num_threads(args.threads)
    test = load_dataset("mnist-10k", MNIST_DIR)
    val = test.with_validation(1000)
    rows, settings, plotted = [], [], {}
    for arch in args.models:
        variational, balance, rounds = schedule[arch]
        distill = DistillConfig(args.distill_alpha, args.distill_temperature)
        config = MiracleConfig(block_bits=args.block_bits, variational_epochs=variational, balance_epochs=balance,
                               rounds=rounds, distill=distill, local_reparameterization=args.sampling == "local")
        tag = f"v{variational}-b{balance}-r{rounds}-c{args.block_bits}" + (
            f"-kd{distill.alpha:g}T{distill.temperature:g}" if distill.enabled else "") + ("-local" if args.sampling == "local" else "")
        runs = [cached_sweep(CACHE / f"{arch}-seed{seed}-{tag}-threads{args.threads}.json", targets[arch],
                             lambda missing, s=seed: run_seed(arch, val, test, s, missing, config))
                for seed in range(args.start_seed, args.seeds)]
        if args.no_report:
            continue
        rows += summary(arch, runs, targets[arch])
        plotted[arch] = sweep_points(runs, targets[arch], lambda v: f"MIRACLE {v:g}x")
        settings.append([arch, runs[0]["fp32_bytes"], variational, balance, rounds, args.block_bits,
                         runs[0]["control_steps"], f"{100 * statistics.mean(r['dense']['test'] for r in runs):.2f}",
                         f"{100 * statistics.mean(r['control']['test'] for r in runs):.2f}"])
    if args.no_report:
        return
    text = header(f"MIRACLE (Havasi et al. 2019), {args.seeds} seed(s)") + "\n"
    if args.note:
        text += f"**Note:** {args.note}\n\n"
    text += __doc__.split("\n\n", 2)[2].split("Per-seed results")[0].strip() + "\n\n"
    text += (f"Settings: Adam lr {MiracleConfig().lr:g}, cosine over the variational and balance epochs, then constant at 0.1x for the coding rounds, batch 64, posterior std initialised "
             f"at the layer's weight std, penalty step {MiracleConfig().beta_step:g} in log beta; not tuned on test."
             + (f" Knowledge distillation from the dense model in every epoch (alpha {args.distill_alpha:g}, T "
                f"{args.distill_temperature:g}; flows/distill.py); the control is trained through the same phases "
                "with the same distillation from the same teacher (self-distillation)." if args.distill_alpha else "")
             + (" Local reparameterization (Kingma et al. 2015; `posterior_sampling(local=True)`): every Linear / Conv "
                "output is drawn from its distribution under the posterior, noise independent per example, instead "
                "of one weight sample per batch." if args.sampling == "local" else
                " Weight sampling (the paper's): one sample of every weight per batch.")
             + "\n\n")
    text += table(["model", "fp32 bytes", "variational epochs", "balance epochs", "coding rounds", "C (bits/block)",
                   "control steps", "dense test %", "control test %"], settings)
    text += "\n" + table(["model", "target", "file B", "compression", "index bits / parameter", "blocks (mean)", "val %",
                          "val gap", "test %", "control test %", "test gap (mean ± se)", "worst seed",
                          "gap vs dense (mean ± se)", "worst seed vs dense", "decode exact"], rows)
    text += (f"\n![rate vs accuracy]({args.name}.png)\n\nPublished points (red lines) were trained on the 60,000 MNIST "
             "training images and tested on the official 10,000; ours use 7,000 training images.\n")
    plot(plotted, RESULTS / f"{args.name}.png")
    write_results(args.name, text)


if __name__ == "__main__":
    main()
