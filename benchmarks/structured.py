"""Structured (channel) pruning that really runs faster: ResNet-20 and vgg_small on mnist-10k.

Usage: python benchmarks/structured.py [--models resnet20 vgg_small] [--seeds 0 1 2] [--dense-epochs 4]
           [--finetune-epochs 2] [--sparsity 0.3] [--threads 2] [--slim] [--out structured]

Per model and seed, in one process: train the dense model, then
- ours: `ChannelPrune(sparsity)` (filter L2 norm, per dependency group, residual stages pruned
  together), fine-tune, `shrink_` to a smaller dense model;
- Torch-Pruning: `MetaPruner(MagnitudeImportance(p=2), pruning_ratio=sparsity)` on the same dense
  model (same MAC target, the classifier ignored as in ours), the same fine-tuning budget;
then CPU latency at batch 64 of dense vs both, interleaved (medians of per-round ratios).
`--slim` adds network slimming on vgg_small: sparsity training with the L1 penalty on BN scales
(Liu et al. 2017) and a sweep of the globally pruned channel fraction, before and after fine-tuning.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import statistics
import sys
from pathlib import Path

import torch
from torch import nn

from common import MNIST_DIR, RESULTS, header, table, write_results
from nncompress.analysis.metrics import count_params, total_macs
from nncompress.api import apply_, training_config
from nncompress.export.bench import interleaved, ratio
from nncompress.prune.shrink import shrink_
from nncompress.prune.slimming import NetworkSlimming
from nncompress.prune.structured import ChannelPrune
from nncompress.train import evaluate, fit
from nncompress.zoo import build_model, load_dataset

BATCH = 64
TRAIN_THREADS = 1  # training on a shared machine: one thread wastes no time spinning
FINETUNE_LR_FACTOR = 0.2


def train(model: nn.Module, data, arch: str, epochs: int, seed: int, lr_factor: float = 1.0, regularizers=()) -> None:
    base = training_config(arch, seed=seed)
    config = training_config(arch, epochs=epochs, seed=seed, lr=base.lr * lr_factor)
    fit(model, data.train_loader(BATCH, seed=seed), config, regularizers=regularizers, log=lambda s: None,
        progress=False)


def accuracy(model: nn.Module, data) -> float:
    return evaluate(model, data.test_loader())["accuracy"]


def torch_pruning_copy(dense: nn.Module, example: torch.Tensor, sparsity: float) -> nn.Module:
    import torch_pruning as tp

    model = copy.deepcopy(dense)
    classifier = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    pruner = tp.pruner.MetaPruner(model, example, importance=tp.importance.MagnitudeImportance(p=2),
                                  pruning_ratio=sparsity, ignored_layers=[classifier])
    pruner.step()
    return model


def latency(models: dict[str, nn.Module], x: torch.Tensor, repeats: int, threads: int) -> dict[str, list[float]]:
    for m in models.values():
        m.eval()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            return interleaved({name: (lambda m=m: m(x)) for name, m in models.items()}, repeats, warmup=3)
    finally:
        torch.set_num_threads(TRAIN_THREADS)


def run_seed(arch: str, seed: int, data, args) -> dict:
    torch.manual_seed(seed)
    dense = build_model(arch, data.in_shape, data.num_classes)
    train(dense, data, arch, args.dense_epochs, seed)
    calib = [data.train_x[:BATCH]]
    ours = copy.deepcopy(dense)
    apply_(ours, ChannelPrune(sparsity=args.sparsity), data=calib)
    train(ours, data, arch, args.finetune_epochs, seed + 1000, FINETUNE_LR_FACTOR)
    masked_acc = accuracy(ours, data)
    shrink_(ours, calib[0])
    tpm = torch_pruning_copy(dense, torch.zeros(1, *data.in_shape), args.sparsity)
    train(tpm, data, arch, args.finetune_epochs, seed + 1000, FINETUNE_LR_FACTOR)
    row = {"arch": arch, "seed": seed, "dense_acc": accuracy(dense, data), "ours_acc": accuracy(ours, data),
           "ours_masked_acc": masked_acc, "tp_acc": accuracy(tpm, data)}
    for name, m in (("dense", dense), ("ours", ours), ("tp", tpm)):
        row[f"{name}_macs"], row[f"{name}_params"] = total_macs(m, data.in_shape), count_params(m)
    x = data.test_x[:BATCH]
    times = latency({"dense": dense, "ours": ours, "tp": tpm}, x, args.repeats, args.threads)
    for name in ("ours", "tp"):
        row[f"{name}_speedup"] = ratio(times, "dense", name)
    row["dense_ms"] = 1e3 * statistics.median(times["dense"])
    print({k: v for k, v in row.items()}, flush=True)
    return row


def latency_only(args) -> str:
    """Dense vs shrunk vs Torch-Pruning latency without training: the pruned shapes depend only on
    the sparsity (every group loses round(sparsity x C) channels in both tools), not on the weights."""
    rows = []
    for arch in args.models:
        torch.manual_seed(0)
        dense = build_model(arch, (1, 28, 28), 10).eval()
        x = torch.randn(BATCH, 1, 28, 28)
        ours = copy.deepcopy(dense)
        apply_(ours, ChannelPrune(sparsity=args.sparsity), data=[x])
        shrink_(ours, x)
        tpm = torch_pruning_copy(dense, x[:1], args.sparsity)
        red = {n: total_macs(dense, (1, 28, 28)) / total_macs(m, (1, 28, 28)) for n, m in (("ours", ours), ("tp", tpm))}
        for threads in args.latency_threads:
            load = os.getloadavg()[0]
            times = latency({"dense": dense, "ours": ours, "tp": tpm}, x, args.repeats, threads)
            for key, name in (("ours", "nncompress ChannelPrune + shrink_"), ("tp", "Torch-Pruning MetaPruner")):
                s = ratio(times, "dense", key)
                rows.append([arch, threads, f"{load:.1f}", name, f"{1e3 * statistics.median(times['dense']):.1f}",
                             f"{1e3 * statistics.median(times[key]):.1f}", f"{red[key]:.2f}x", speed(s),
                             f"{s[0] / red[key]:.2f}"])
                print(rows[-1], flush=True)
    return table(["model", "threads", "load avg (1 min)", "pruned by", "dense ms", "pruned ms", "MAC reduction",
                  "speed-up (median, min-max)", "speed-up / MAC reduction"], rows)


def slimming_sweep(seed: int, data, args) -> tuple[list[list], list[dict]]:
    """vgg_small: sparsity-trained (L1 on gamma) vs plainly trained, pruned globally by |gamma|."""
    arch, method = "vgg_small", NetworkSlimming(sparsity=0.5, penalty=args.slim_penalty)
    results = []
    for label, penalty in (("L1 on gamma", True), ("plain", False)):
        torch.manual_seed(seed)
        base = build_model(arch, data.in_shape, data.num_classes)
        train(base, data, arch, args.dense_epochs, seed, regularizers=method.regularizers(base) if penalty else ())
        results.append({"training": label, "fraction": 0.0, "acc_pruned": accuracy(base, data),
                        "acc_finetuned": accuracy(base, data), "macs": total_macs(base, data.in_shape),
                        "params": count_params(base)})
        for fraction in args.slim_fractions:
            model = copy.deepcopy(base)
            apply_(model, NetworkSlimming(sparsity=fraction, penalty=args.slim_penalty), data=[data.train_x[:BATCH]])
            pruned_acc = accuracy(model, data)
            train(model, data, arch, args.slim_finetune_epochs, seed + 1000, FINETUNE_LR_FACTOR)
            shrink_(model, data.train_x[:BATCH])
            results.append({"training": label, "fraction": fraction, "acc_pruned": pruned_acc,
                            "acc_finetuned": accuracy(model, data), "macs": total_macs(model, data.in_shape),
                            "params": count_params(model)})
            print(results[-1], flush=True)
    rows = [[r["training"], f"{100 * r['fraction']:.0f}%", f"{100 * r['acc_pruned']:.2f}",
             f"{100 * r['acc_finetuned']:.2f}", f"{r['macs'] / 1e6:.2f}M", f"{r['params']:,}"] for r in results]
    return rows, results


def plot_slimming(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for label in ("L1 on gamma", "plain"):
        rs = [r for r in results if r["training"] == label]
        xs = [100 * r["fraction"] for r in rs]
        ax.plot(xs, [100 * r["acc_pruned"] for r in rs], marker="o", linestyle="--", label=f"{label}: pruned, no fine-tune")
        ax.plot(xs, [100 * r["acc_finetuned"] for r in rs], marker="s", label=f"{label}: pruned + fine-tuned")
    ax.set_xlabel("channels pruned (%, global |gamma| threshold)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Network slimming, vgg_small on mnist-10k")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def pct(values: list[float]) -> str:
    return f"{100 * statistics.mean(values):.2f}"


def speed(s: tuple[float, float, float]) -> str:
    return f"{s[0]:.2f}x ({s[1]:.2f}-{s[2]:.2f})"


def report(rows: list[dict], args) -> str:
    out = [["model", "seed", "variant", "test acc %", "vs dense (points)", "MACs", "MAC reduction", "params",
            "speed-up vs dense (median, min-max)", "speed-up / MAC reduction"]]
    for r in rows:
        out.append([r["arch"], r["seed"], "dense", f"{100 * r['dense_acc']:.2f}", "", f"{r['dense_macs'] / 1e6:.2f}M",
                    "1.00x", f"{r['dense_params']:,}", f"1.00x ({r['dense_ms']:.1f} ms)", ""])
        for key, name in (("ours", "nncompress ChannelPrune + shrink_"), ("tp", "Torch-Pruning MetaPruner")):
            red = r["dense_macs"] / r[f"{key}_macs"]
            out.append([r["arch"], r["seed"], name, f"{100 * r[f'{key}_acc']:.2f}",
                        f"{100 * (r[f'{key}_acc'] - r['dense_acc']):+.2f}", f"{r[f'{key}_macs'] / 1e6:.2f}M",
                        f"{red:.2f}x", f"{r[f'{key}_params']:,}", speed(r[f"{key}_speedup"]),
                        f"{r[f'{key}_speedup'][0] / red:.2f}"])
    text = table(out[0], out[1:])
    means = [["model", "seeds", "variant", "mean test acc %", "mean gap (points)", "mean speed-up"]]
    for arch in dict.fromkeys(r["arch"] for r in rows):
        rs = [r for r in rows if r["arch"] == arch]
        means.append([arch, len(rs), "dense", pct([r["dense_acc"] for r in rs]), "", "1.00x"])
        for key, name in (("ours", "nncompress"), ("tp", "Torch-Pruning")):
            gap = statistics.mean(r[f"{key}_acc"] - r["dense_acc"] for r in rs)
            means.append([arch, len(rs), name, pct([r[f"{key}_acc"] for r in rs]), f"**{100 * gap:+.2f}**",
                          f"{statistics.mean(r[f'{key}_speedup'][0] for r in rs):.2f}x"])
    return text + "\n" + table(means[0], means[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=["resnet20", "vgg_small"], help="none: only --slim")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--dense-epochs", type=int, default=4)
    parser.add_argument("--finetune-epochs", type=int, default=2)
    parser.add_argument("--sparsity", type=float, default=0.3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--slim", action="store_true")
    parser.add_argument("--slim-penalty", type=float, default=1e-3)
    parser.add_argument("--slim-fractions", nargs="+", type=float, default=[0.2, 0.35, 0.5, 0.65, 0.8])
    parser.add_argument("--slim-finetune-epochs", type=int, default=1)
    parser.add_argument("--train-images", type=int, default=None, help="train on the first N images only")
    parser.add_argument("--latency-only", action="store_true", help="untrained models: latency of the pruned shapes")
    parser.add_argument("--latency-threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--out", default="structured")
    args = parser.parse_args()
    torch.set_num_threads(TRAIN_THREADS)
    data = load_dataset("mnist-10k", MNIST_DIR)
    if args.train_images:
        data = dataclasses.replace(data, train_x=data.train_x[:args.train_images], train_y=data.train_y[:args.train_images])
    load = os.getloadavg()
    if args.latency_only:
        text = header("Latency of channel-pruned, shrunk models (untrained weights, same shapes)") + "\n"
        text += (f"Batch {BATCH}, float32 PyTorch eager, {args.repeats} interleaved rounds (dense, ours, Torch-Pruning "
                 f"in turns) per thread count; `--sparsity {args.sparsity}` of every dependency group's channels "
                 "removed. The machine is shared: the load average is recorded per row.\n\n")
        write_results(args.out, text + latency_only(args))
        return
    rows = [run_seed(arch, seed, data, args) for arch in args.models for seed in args.seeds]
    import torch_pruning

    torch.set_num_threads(args.threads)  # the header reports the latency thread count
    text = header("Structured pruning that runs faster: channel pruning + shrinking on mnist-10k") + "\n"
    text += f"Training threads: {TRAIN_THREADS}; latency threads: {args.threads}.\n"
    text += (f"Load average at start: {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (1/5/15 min; the machine is shared, "
             f"so latencies are only compared within this process, interleaved). Torch-Pruning {torch_pruning.__version__}.\n\n"
             f"Training images: {len(data.train_x):,}; test split: 2,000 images (one image = 0.05 points).\n\n")
    if rows:
        text += (f"Budget (reduced to fit the shared 2-core machine): dense {args.dense_epochs} epochs with the model's "
             f"recommended schedule (SGD, cosine), then `--sparsity {args.sparsity}` of the channels of every "
             f"dependency group removed and {args.finetune_epochs} fine-tuning epochs at {FINETUNE_LR_FACTOR} x the "
             f"learning rate, for both tools. Latency: float32 PyTorch eager, batch {BATCH}, {args.threads} threads, "
             f"{args.repeats} interleaved rounds after warm-up; speed-up = median of per-round dense / pruned time "
             "(min-max in brackets).\n\n")
    if rows:
        text += report(rows, args)
    if args.slim:
        slim_rows, results = slimming_sweep(args.seeds[0], data, args)
        png = RESULTS / f"{args.out}_slimming.png"
        plot_slimming(results, png)
        text += (f"\n## Network slimming on vgg_small (seed {args.seeds[0]})\n\n"
                 f"Sparsity training: {args.dense_epochs} epochs with s = {args.slim_penalty} x sum |gamma| added to the "
                 "loss (`NetworkSlimming.regularizers`), against the same schedule without it. Then the given fraction "
                 "of all BN'd channels with the smallest |gamma| is pruned under one global threshold, fine-tuned "
                 f"{args.slim_finetune_epochs} epoch(s) and shrunk. Plot: `{png.name}`.\n\n")
        text += table(["training", "channels pruned", "acc % pruned (no fine-tune)", "acc % fine-tuned", "MACs",
                       "params"], slim_rows)
    write_results(args.out, text)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
