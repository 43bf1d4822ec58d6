"""Soft weight-sharing (Ullrich, Meeds & Welling, ICLR 2017) on the LeNets: rate vs accuracy over a tau
sweep, in real .nnc bytes, against the same-budget dense control.

Usage: nice -n 19 python benchmarks/soft_sharing.py [--seeds 3] [--models lenet300 lenet5]
           [--taus 1.5e-2 | --taus lenet300=1.5e-2 lenet5=9e-3,1.5e-2] [--epochs lenet300=60 lenet5=60] [--lr 1e-3]
           [--assign posterior] [--per-layer] [--codebook-epochs 10] [--threads 1]
(the defaults are the measured settings of soft_sharing.md; soft_sharing_lenet5_200x.md adds --taus lenet5=9e-3)

Per model and seed, on mnist-10k's first 7,000 training images (the last 1,000 are the validation
split; the 2,000-image test split is evaluated once, never used to choose):
  dense    the very dense model honest.py trained (runs/honest/, same seed, data and threads), or the
           model trained with its recipe (flows.prune.dense_model) when that cache is missing;
  SWS      `SoftWeightSharing(tau=tau, shared=...)` on every Conv / Linear weight (17 components, the
           zero one fixed at pi_0 = 0.999, the paper's Gamma hyperpriors; one prior for the network
           as in the paper, or with --per-layer one per layer), one Adam phase of E epochs with the
           complexity term tau / N (-log p(w) - log p(lambda)), N = 7,000, the prior's parameters at
           their own learning-rate factors (`MixturePrior.lr_scales`); then `snap_to_mixture_`
           (--assign: posterior = the paper's argmax_j pi_j N(w | mu_j), likelihood = argmax_j N(w | mu_j)):
           each weight takes its component's mean, the zero component prunes; with --codebook-epochs,
           Deep Compression's codebook fine-tuning follows (mask and assignments fixed); biases
           rounded to float16; written to .nnc ([mask, codebook] chains, Deep Compression's codecs)
           and the accuracy is the decoded file's;
  control  the dense model trained through exactly the same phases (same configs, loader seeds and
           steps: flows/control.py) with nothing compressed.
compression = fp32 parameter bytes / file bytes. Per-seed results are cached in runs/soft_sharing/
(keyed on model, seed, epochs, the settings and threads: delete the folder after changing the method).
"""
from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
from pathlib import Path

import torch

from common import MNIST_DIR, RESULTS, accuracies, cached_sweep, header, sweep_cells, sweep_points, table, write_results
from frontier import plot
from nncompress.analysis.metrics import count_params
from nncompress.api import apply_, resolve_model
from nncompress.encode.container import read_nnc, write_nnc
from nncompress.encode.deep_compression import round_biases_fp16_
from nncompress.encode.model import decode_model, encode_model
from nncompress.flows.control import TrainingPhase, codebook_phase, same_budget_control
from nncompress.flows.prune import dense_model
from nncompress.quant.soft_sharing import MixturePrior, SoftWeightSharing, snap_to_mixture_
from nncompress.train import TrainConfig
from nncompress.zoo import load_dataset

ROOT = Path(__file__).resolve().parents[1]
CACHE, HONEST_CACHE = ROOT / "runs" / "soft_sharing", ROOT / "runs" / "honest"
CODEBOOK_LR = 1e-3  # Deep Compression's codebook fine-tuning (SGD), as honest.py's


def phases(settings: dict, epochs: int, seed: int) -> list[TrainingPhase]:
    """The SWS phase (Adam at the weights' lr, the prior at its factors) and the optional codebook
    fine-tuning after the snap: what the row trains and what its control replays."""
    sws = TrainingPhase(TrainConfig(epochs=epochs, lr=settings["lr"], optimizer="adam", weight_decay=0.0,
                                    seed=seed + 600), seed + 600, 64, "soft weight-sharing")
    return [sws] + codebook_phase(settings["codebook_epochs"], CODEBOOK_LR, seed)


def settings_tag(settings: dict) -> str:
    """The cache key of the settings, the prior's learning-rate factors included."""
    scales = "-".join(f"{v:g}" for v in MixturePrior.lr_scales.values())
    return (f"lr{settings['lr']:g}-s{scales}-{settings['assign']}-{'shared' if settings['shared'] else 'layer'}"
            f"-cb{settings['codebook_epochs']}")


def load_dense(arch: str, val, seed: int, threads: int):
    """honest.py's dense model of this seed when cached (so the rows compare with honest.md / frontier.md), else
    the zoo recipe's."""
    saved = HONEST_CACHE / f"{arch}-seed{seed}-dense.pt"
    if threads == 1 and saved.is_file():
        model, _, _ = resolve_model(arch, val, seed=seed)
        model.load_state_dict(torch.load(saved, weights_only=True))
        return model.eval(), "honest.py cache"
    model, _, _ = dense_model(arch, val, seed)
    return model.eval(), "trained here"


def written(model, arch: str, val) -> tuple[int, object]:
    """(file bytes, decoded model) of `model` written to .nnc and read back."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.nnc"
        size = write_nnc(path, encode_model(model, {"arch": arch, "in_shape": list(val.in_shape),
                                                    "num_classes": val.num_classes}))
        return size, decode_model(read_nnc(path)).eval()


def sws_row(dense, arch: str, val, test, tau: float, epochs: int, seed: int, settings: dict) -> dict:
    model = copy.deepcopy(dense)
    method = SoftWeightSharing(tau=tau, dataset_size=len(val.train_x), shared=settings["shared"])
    apply_(model, method)
    sws, *finetune = phases(settings, epochs, seed)
    sws.run(model, val, regularizers=method.regularizers(model), progress=False)
    soft = accuracies(model.eval(), val, test)  # before snapping: the float weights under the prior
    layers = snap_to_mixture_(model, assign=settings["assign"])
    snapped = accuracies(model.eval(), val, test)
    for phase in finetune:
        phase.run(model, val, progress=False)
    round_biases_fp16_(model)
    model.eval()
    size, decoded = written(model, arch, val)
    x = next(iter(test.test_loader()))[0]
    exact = all(torch.equal(decoded.get_submodule(n).weight, model.get_submodule(n).weight) for n in layers) \
        and torch.equal(decoded(x), model(x))
    return {**accuracies(decoded, val, test), "soft": soft, "snapped": snapped, "bytes": size, "layers": layers,
            "exact": exact,
            "nonzero": sum(int((decoded.get_submodule(n).weight != 0).sum()) for n in layers)}


def run_seed(arch: str, val, test, seed: int, taus: list[float], epochs: int, threads: int, settings: dict) -> dict:
    dense, source = load_dense(arch, val, seed, threads)
    control, info = same_budget_control(dense, val, phases(settings, epochs, seed))
    rows = {f"{tau:g}": sws_row(dense, arch, val, test, tau, epochs, seed, settings) for tau in taus}
    return {"arch": arch, "seed": seed, "epochs": epochs, "dense_source": source, "dense": accuracies(dense, val, test),
            "control": accuracies(control, val, test), "control_steps": info["steps"],
            "fp32_bytes": 4 * count_params(dense), "rows": rows}


def cached_seed(arch, val, test, seed, taus, epochs, threads, settings) -> dict:
    return cached_sweep(CACHE / f"{arch}-seed{seed}-e{epochs}-{settings_tag(settings)}-threads{threads}.json", taus,
                        lambda missing: run_seed(arch, val, test, seed, missing, epochs, threads, settings))


def summary(arch: str, runs: list[dict], taus: list[float]) -> list[list[object]]:
    out = []
    for tau in taus:
        rows, head, tail = sweep_cells(runs, f"{tau:g}")
        out.append([arch, f"{tau:g}", *head,
                    f"{100 * statistics.mean(x['nonzero'] / (r['fp32_bytes'] / 4) for x, r in zip(rows, runs)):.2f}",
                    f"{100 * statistics.mean(x['soft']['test'] for x in rows):.2f}",
                    f"{100 * statistics.mean(x['snapped']['test'] for x in rows):.2f}", *tail])
    return out


def per_seed(arch: str, runs: list[dict], taus: list[float]) -> list[list[object]]:
    """Each seed's file and what the snap kept per layer (kept % / shared values)."""
    return [[arch, r["seed"], f"{tau:g}", f"{r['rows'][f'{tau:g}']['bytes']:,}",
             f"{r['fp32_bytes'] / r['rows'][f'{tau:g}']['bytes']:.1f}x",
             f"{100 * r['rows'][f'{tau:g}']['val']:.2f}", f"{100 * r['rows'][f'{tau:g}']['test']:.2f}",
             ", ".join(f"{n} {100 * v['kept']:.2f}%/{v['shared_values']}" for n, v in r["rows"][f"{tau:g}"]["layers"].items())]
            for r in runs for tau in taus]


def model_taus(given: list[str], models: list[str]) -> dict[str, list[float]]:
    """--taus as {model: [tau, ...]}: plain values apply to every model without a `model=t1,t2` entry."""
    plain = [float(v) for v in given if "=" not in v]
    named = {k: [float(t) for t in v.split(",")] for k, v in (g.split("=", 1) for g in given if "=" in g)}
    unknown = set(named) - set(models)
    if unknown or any(not named.get(arch, plain) for arch in models):
        raise SystemExit(f"--taus {' '.join(given)}: give taus for every model of {models} (and only those)")
    return {arch: named.get(arch, plain) for arch in models}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (default 3)")
    parser.add_argument("--start-seed", type=int, default=0, help="compute seeds start..seeds-1 only (parallel runs)")
    parser.add_argument("--no-report", action="store_true", help="compute and cache only; write no results file")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, pinned (default 1: honest.py's caches)")
    parser.add_argument("--models", nargs="+", default=["lenet300", "lenet5"])
    parser.add_argument("--taus", nargs="+", default=["1.5e-2"],
                        help="complexity weights per training set, for every model or per model as "
                             "model=t1,t2 (default 1.5e-2; the paper's 5e-3 is per 60,000 images)")
    parser.add_argument("--epochs", nargs="+", default=["lenet300=60", "lenet5=60"], help="SWS epochs per model (default 60 each)")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate of the weights (default 1e-3; the paper's 5e-4)")
    parser.add_argument("--assign", choices=["posterior", "likelihood"], default="posterior",
                        help="snap rule (default posterior, the paper's)")
    parser.add_argument("--per-layer", action="store_true", help="one prior per layer, not one for the network (the paper's)")
    parser.add_argument("--codebook-epochs", type=int, default=10, help="codebook fine-tuning epochs after the snap (default 10)")
    parser.add_argument("--name", default="soft_sharing", help="results file name (default soft_sharing)")
    parser.add_argument("--note", default="", help="a sentence under the results header")
    args = parser.parse_args()
    epochs = {arch: 60 for arch in args.models} | {k: int(v) for k, v in (e.split("=") for e in args.epochs)}
    taus = model_taus(args.taus, args.models)
    settings = {"lr": args.lr, "assign": args.assign, "shared": not args.per_layer, "codebook_epochs": args.codebook_epochs}
    torch.set_num_threads(args.threads)
    test = load_dataset("mnist-10k", MNIST_DIR)
    val = test.with_validation(1000)
    rows, dense_rows, seed_rows, plotted = [], [], [], {}
    for arch in args.models:
        runs = []
        for seed in range(args.start_seed, args.seeds):
            runs.append(cached_seed(arch, val, test, seed, taus[arch], epochs[arch], args.threads, settings))
            print(arch, seed, {k: (v["val"], v["test"], v["bytes"]) for k, v in runs[-1]["rows"].items()},
                  "control", runs[-1]["control"], flush=True)
        if args.no_report:
            continue
        rows += summary(arch, runs, taus[arch])
        plotted[arch] = sweep_points(runs, taus[arch], lambda v: f"SWS tau {v:g}")
        seed_rows += per_seed(arch, runs, taus[arch])
        dense_rows.append([arch, runs[0]["fp32_bytes"], runs[0]["dense_source"], epochs[arch], runs[0]["control_steps"],
                           f"{100 * statistics.mean(r['dense']['test'] for r in runs):.2f}",
                           f"{100 * statistics.mean(r['control']['test'] for r in runs):.2f}"])
    if args.no_report:
        return
    text = header(f"Soft weight-sharing (Ullrich et al. 2017), {args.seeds} seed(s)") + "\n"
    if args.note:
        text += f"**Note:** {args.note}\n\n"
    text += __doc__.split("\n\n", 2)[2].split("Per-seed results")[0].strip() + "\n\n"
    text += (f"Settings: Adam lr {args.lr:g} for the weights, the prior's parameters at "
             f"{', '.join(f'{k} x{v:g}' for k, v in MixturePrior.lr_scales.items())}, no weight decay, cosine schedule, "
             f"batch 64; {'one prior per layer' if args.per_layer else 'one prior for the network'}; snap: {args.assign}; "
             f"codebook fine-tuning: {args.codebook_epochs} epochs (SGD lr {CODEBOOK_LR:g}). tau = the complexity "
             "term's weight per training set (the paper: 5e-3 with N = 60,000). 'soft test %' is the float model "
             "under the prior before snapping, 'snapped test %' right after it (before any fine-tuning).\n\n")
    text += table(["model", "fp32 bytes", "dense model", "SWS epochs", "control steps", "dense test %",
                   "control test %"], dense_rows)
    text += "\n" + table(["model", "tau", "file B", "compression", "nonzero % of parameters", "soft test %",
                          "snapped test %", "val %", "val gap",
                          "test %", "control test %", "test gap (mean ± se)", "worst seed", "decode exact"], rows)
    text += (f"\n![rate vs accuracy]({args.name}.png)\n\nPublished points (red lines) were trained on the 60,000 MNIST "
             "training images and tested on the official 10,000; ours use 7,000 training images.\n")
    text += "\n### Per seed (kept % / shared values per layer)\n\n" + table(
        ["model", "seed", "tau", "file B", "compression", "val %", "test %", "layers"], seed_rows)
    plot(plotted, RESULTS / f"{args.name}.png")
    write_results(args.name, text)


if __name__ == "__main__":
    main()
