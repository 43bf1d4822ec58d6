"""Structured (channel) pruning that really runs faster: ResNet-20 and vgg_small on mnist-10k.

Usage: python benchmarks/structured.py [--models resnet20 vgg_small] [--seeds 0 1 2] [--dense-epochs 4]
           [--finetune-epochs 2] [--sparsity 0.3] [--threads 2] [--slim] [--out structured]
       python benchmarks/structured.py --latency-only --round-to 1 8 16 --backends eager channels_last torchscript ort
       python benchmarks/structured.py --round-to 1 16 --no-latency   # accuracy of the rounded variants

Per model and seed, in one process: train the dense model, then
- ours: `ChannelPrune(sparsity)` (filter L2 norm, per dependency group, residual stages pruned
  together), fine-tune, `shrink_` to a smaller dense model;
- Torch-Pruning: `MetaPruner(MagnitudeImportance(p=2), pruning_ratio=sparsity)` on the same dense
  model (same MAC target, the classifier ignored as in ours), the same fine-tuning budget;
then CPU latency at batch 64 of dense vs both, interleaved (medians of per-round ratios).
`--round-to 1 8 16` prunes one variant per value (`ChannelPrune(round_to=N)`: every group keeps a
multiple of N channels), each at the sparsity whose shrunk MAC reduction is nearest `--mac-target`
(2x); Torch-Pruning gets its own `round_to` alike. `--backends` times dense and pruned models on
the same backend each: PyTorch eager (NCHW), eager channels_last, TorchScript frozen +
`optimize_for_inference` (oneDNN layouts, conv+BN folded, conv+ReLU fused) and ONNX Runtime (the
float model through `nncompress.export.onnx.export_onnx`); the ratio is always dense / pruned on
the same backend.
`--slim` adds network slimming on vgg_small: sparsity training with the L1 penalty on BN scales
(Liu et al. 2017) and a sweep of the globally pruned channel fraction, before and after fine-tuning.
"""
from __future__ import annotations

import argparse
import copy
import copy
import dataclasses
import os
import statistics
import sys
from pathlib import Path

import torch
from torch import nn

from common import MNIST_DIR, RESULTS, header, table, write_results
from latency_backends import BACKEND_NAMES, BACKENDS, latency
from nncompress.analysis.metrics import count_params, total_macs
from nncompress.api import apply_, training_config
from nncompress.export.bench import ratio
from nncompress.prune.shrink import shrink_
from nncompress.prune.slimming import NetworkSlimming, matched_penalty
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


def torch_pruning_copy(dense: nn.Module, example: torch.Tensor, sparsity: float, round_to: int = 1) -> nn.Module:
    import torch_pruning as tp

    model = copy.deepcopy(dense)
    classifier = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    pruner = tp.pruner.MetaPruner(model, example, importance=tp.importance.MagnitudeImportance(p=2),
                                  pruning_ratio=sparsity, ignored_layers=[classifier],
                                  round_to=round_to if round_to > 1 else None)
    pruner.step()
    return model


@dataclasses.dataclass(frozen=True)
class Variant:
    """One pruned model: which tool, its channel rounding and the sparsity that gives the MAC target."""

    tool: str  # "ours" or "tp"
    round_to: int
    sparsity: float

    @property
    def key(self) -> str:
        return f"{self.tool}_r{self.round_to}"

    @property
    def label(self) -> str:
        name = "nncompress ChannelPrune + shrink_" if self.tool == "ours" else "Torch-Pruning MetaPruner"
        return f"{name}, round_to={self.round_to}, sparsity {self.sparsity:.2f}"


def prune_variant(dense: nn.Module, variant: Variant, calib: list[torch.Tensor]) -> nn.Module:
    """A pruned copy of `dense` (ours: masked, not yet shrunk; Torch-Pruning: already smaller)."""
    if variant.tool == "tp":
        return torch_pruning_copy(dense, calib[0][:1], variant.sparsity, variant.round_to)
    model = copy.deepcopy(dense)
    apply_(model, ChannelPrune(sparsity=variant.sparsity, round_to=variant.round_to), data=calib)
    return model


def channel_counts(model: nn.Module) -> str:
    """The distinct output-channel counts of the convolutions, e.g. '16/32'."""
    return "/".join(str(c) for c in sorted({m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)}))


def choose_sparsity(arch: str, tool: str, round_to: int, target: float, in_shape=(1, 28, 28)) -> float:
    """The sparsity (0.20 ... 0.60 in steps of 0.05) whose pruned, shrunk shapes cut the MACs nearest
    `target` x (ties: the lower sparsity). Shapes only (random weights): the kept counts do not
    depend on the weights, only on the group sizes, the sparsity and round_to."""
    torch.manual_seed(0)
    dense = build_model(arch, in_shape, 10).eval()
    x = torch.randn(2, *in_shape)
    base = total_macs(dense, in_shape)
    best = None
    for step in range(4, 13):
        s = step / 20
        model = prune_variant(dense, Variant(tool, round_to, s), [x])
        if tool == "ours":
            shrink_(model, x)
        red = base / total_macs(model, in_shape)
        if best is None or abs(red - target) < best[0] - 1e-9:
            best = (abs(red - target), s)
    return best[1]


def variants(arch: str, args) -> list[Variant]:
    """Ours for every --round-to, Torch-Pruning for the first and last (unrounded and most rounded);
    --sparsity fixes every variant's sparsity instead of the MAC target."""
    out = []
    rounds = list(dict.fromkeys(args.round_to))
    for tool, values in (("ours", rounds), ("tp", list(dict.fromkeys([rounds[0], rounds[-1]])) if args.torch_pruning else [])):
        for r in values:
            s = args.sparsity if args.sparsity is not None else choose_sparsity(arch, tool, r, args.mac_target)
            out.append(Variant(tool, r, s))
    return out


def latency_rows(arch: str, models: dict[str, nn.Module], labels: dict[str, str], x: torch.Tensor, args,
                 in_shape=(1, 28, 28)) -> list[list]:
    """One row per (threads, backend, pruned model): dense ms, pruned ms, MAC reduction, speed-up."""
    macs = {k: total_macs(m, in_shape) for k, m in models.items()}
    rows = []
    for threads in args.latency_threads:
        for backend in args.backends:
            load = open("/proc/loadavg").read().split()[0]
            times = latency(models, x, args.repeats, threads, backend, threads_after=TRAIN_THREADS)
            for key in models:
                if key == "dense":
                    continue
                s, red = ratio(times, "dense", key), macs["dense"] / macs[key]
                rows.append([arch, threads, BACKEND_NAMES[backend], labels[key], channel_counts(models[key]), load,
                             f"{1e3 * statistics.median(times['dense']):.1f}", f"{1e3 * statistics.median(times[key]):.1f}",
                             f"{red:.2f}x", speed(s), f"**{s[0] / red:.2f}**"])
                print(rows[-1], flush=True)
    return rows


LATENCY_COLUMNS = ["model", "threads", "backend (dense and pruned alike)", "pruned by", "conv channels", "load avg (1 min)",
                   "dense ms", "pruned ms", "MAC reduction", "speed-up (median, min-max)", "speed-up / MAC reduction"]


def run_seed(arch: str, seed: int, data, args) -> dict:
    torch.manual_seed(seed)
    dense = build_model(arch, data.in_shape, data.num_classes)
    train(dense, data, arch, args.dense_epochs, seed)
    calib = [data.train_x[:BATCH]]
    row = {"arch": arch, "seed": seed, "dense_acc": accuracy(dense, data), "dense_macs": total_macs(dense, data.in_shape),
           "dense_params": count_params(dense), "variants": []}
    models = {"dense": dense}
    if args.dense_control:  # the same-budget control: the dense model gets the fine-tuning epochs too
        control = copy.deepcopy(dense)
        train(control, data, arch, args.finetune_epochs, seed + 1000, FINETUNE_LR_FACTOR)
        row["control_acc"] = accuracy(control, data)
    for variant in variants(arch, args):
        model = prune_variant(dense, variant, calib)
        train(model, data, arch, args.finetune_epochs, seed + 1000, FINETUNE_LR_FACTOR)
        v = {"variant": variant, "acc": accuracy(model, data)}
        if variant.tool == "ours":
            v["masked_acc"] = v["acc"]
            shrink_(model, calib[0])
            v["acc"] = accuracy(model, data)
        v.update(macs=total_macs(model, data.in_shape), params=count_params(model), channels=channel_counts(model))
        row["variants"].append(v)
        models[variant.key] = model
        print(arch, seed, variant, {k: x for k, x in v.items() if k != "variant"}, flush=True)
    if not args.no_latency:
        times = latency(models, data.test_x[:BATCH], args.repeats, args.threads, threads_after=TRAIN_THREADS)
        row["dense_ms"] = 1e3 * statistics.median(times["dense"])
        for v in row["variants"]:
            v["speedup"] = ratio(times, "dense", v["variant"].key)
    return row


def latency_only(args) -> str:
    """Dense vs shrunk (ours) vs Torch-Pruning latency without training: the pruned shapes depend only on
    the group sizes, the sparsity and round_to (every group keeps its rounded count), not on the weights."""
    rows = []
    for arch in args.models:
        torch.manual_seed(0)
        dense = build_model(arch, (1, 28, 28), 10).eval()
        x = torch.randn(BATCH, 1, 28, 28)
        models, labels = {"dense": dense}, {}
        for variant in variants(arch, args):
            model = prune_variant(dense, variant, [x])
            if variant.tool == "ours":
                shrink_(model, x)
            models[variant.key], labels[variant.key] = model.eval(), variant.label
        rows += latency_rows(arch, models, labels, x, args)
    return table(LATENCY_COLUMNS, rows)


def slim_penalty(data, args) -> float:
    """--slim-penalty, or `matched_penalty` for the sparsity-training schedule (dense epochs, batch 64)."""
    if args.slim_penalty is not None:
        return args.slim_penalty
    steps = -(-len(data.train_x) // BATCH)
    return matched_penalty(training_config("vgg_small", epochs=args.dense_epochs), steps)


def slimming_sweep(seed: int, data, args) -> tuple[list[list], list[dict]]:
    """vgg_small: sparsity-trained (L1 on gamma) vs plainly trained, pruned globally by |gamma|."""
    arch, method = "vgg_small", NetworkSlimming(sparsity=0.5, penalty=slim_penalty(data, args))
    results = []
    for label, penalty in (("L1 on gamma", True), ("plain", False)):
        torch.manual_seed(seed)
        base = build_model(arch, data.in_shape, data.num_classes)
        train(base, data, arch, args.dense_epochs, seed, regularizers=method.regularizers(base) if penalty else ())
        gammas = torch.cat([m.weight.detach().abs() for m in base.modules() if isinstance(m, nn.BatchNorm2d)])
        results.append({"training": label, "fraction": 0.0, "acc_pruned": accuracy(base, data),
                        "acc_finetuned": accuracy(base, data), "macs": total_macs(base, data.in_shape),
                        "params": count_params(base), "gamma_small": float((gammas < 1e-2).float().mean()),
                        "gamma_median": float(gammas.median())})
        print(results[-1], flush=True)
        for fraction in args.slim_fractions:
            model = copy.deepcopy(base)
            apply_(model, NetworkSlimming(sparsity=fraction, penalty=method.penalty), data=[data.train_x[:BATCH]])
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
        if not rs:
            continue
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


def baseline(r: dict) -> float:
    """The accuracy a pruned model is compared with: the same-budget dense control when it was trained."""
    return r.get("control_acc", r["dense_acc"])


def report(rows: list[dict], args) -> str:
    base_name = "dense control" if args.dense_control else "dense"
    out = [["model", "seed", "variant", "conv channels", "test acc %", f"vs {base_name} (points)", "MACs", "MAC reduction",
            "params", "speed-up vs dense, eager (median, min-max)", "speed-up / MAC reduction"]]
    for r in rows:
        dense_speed = "" if args.no_latency else f"1.00x ({r['dense_ms']:.1f} ms)"
        out.append([r["arch"], r["seed"], "dense", "", f"{100 * r['dense_acc']:.2f}", "", f"{r['dense_macs'] / 1e6:.2f}M",
                    "1.00x", f"{r['dense_params']:,}", dense_speed, ""])
        if "control_acc" in r:
            out.append([r["arch"], r["seed"], f"dense control (+{args.finetune_epochs} epochs at {FINETUNE_LR_FACTOR} x lr)",
                        "", f"{100 * r['control_acc']:.2f}", "", f"{r['dense_macs'] / 1e6:.2f}M", "1.00x",
                        f"{r['dense_params']:,}", "", ""])
        for v in r["variants"]:
            red = r["dense_macs"] / v["macs"]
            sp = v.get("speedup")
            out.append([r["arch"], r["seed"], v["variant"].label, v["channels"], f"{100 * v['acc']:.2f}",
                        f"{100 * (v['acc'] - baseline(r)):+.2f}", f"{v['macs'] / 1e6:.2f}M", f"{red:.2f}x",
                        f"{v['params']:,}", speed(sp) if sp else "", f"{sp[0] / red:.2f}" if sp else ""])
    text = table(out[0], out[1:])
    means = [["model", "seeds", "variant", "mean test acc %", f"mean gap to {base_name} (points)",
              "standard error", "worst seed gap", "MAC reduction"]]
    for arch in dict.fromkeys(r["arch"] for r in rows):
        rs = [r for r in rows if r["arch"] == arch]
        means.append([arch, len(rs), "dense", pct([r["dense_acc"] for r in rs]), "", "", "", "1.00x"])
        if all("control_acc" in r for r in rs):
            means.append([arch, len(rs), "dense control", pct([r["control_acc"] for r in rs]), "", "", "", "1.00x"])
        for k, v0 in enumerate(rs[0]["variants"]):
            vs = [r["variants"][k] for r in rs]
            gaps = [100 * (v["acc"] - baseline(r)) for v, r in zip(vs, rs)]
            sem = statistics.stdev(gaps) / len(gaps) ** 0.5 if len(gaps) > 1 else float("nan")
            means.append([arch, len(rs), v0["variant"].label, pct([v["acc"] for v in vs]),
                          f"**{statistics.mean(gaps):+.2f}**", f"{sem:.2f}", f"{min(gaps):+.2f}",
                          f"{rs[0]['dense_macs'] / v0['macs']:.2f}x"])
    return text + "\n" + table(means[0], means[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=["resnet20", "vgg_small"], help="none: only --slim")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--dense-epochs", type=int, default=4)
    parser.add_argument("--finetune-epochs", type=int, default=2)
    parser.add_argument("--sparsity", type=float, default=None,
                        help="one sparsity for every variant (default: per variant, nearest --mac-target)")
    parser.add_argument("--mac-target", type=float, default=2.0, help="MAC reduction the sparsity is chosen for")
    parser.add_argument("--round-to", nargs="+", type=int, default=[1], help="ChannelPrune(round_to=N) variants")
    parser.add_argument("--no-torch-pruning", dest="torch_pruning", action="store_false")
    parser.add_argument("--dense-control", action="store_true",
                        help="also fine-tune a copy of the dense model with the same budget; gaps are then taken to it")
    parser.add_argument("--backends", nargs="+", default=["eager"], choices=BACKENDS)
    parser.add_argument("--no-latency", action="store_true", help="training runs: accuracy only, no timing")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--slim", action="store_true")
    parser.add_argument("--slim-penalty", type=float, default=None,
                        help="s (default: slimming.matched_penalty for the --dense-epochs schedule)")
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
        text = header("Latency of channel-pruned, shrunk models per backend (untrained weights, same shapes)") + "\n"
        text += (f"Batch {BATCH}, float32; per model, thread count and backend, the dense and every pruned model run "
                 f"in turns ({args.repeats} rounds after warm-up, order reversed every round, each turn repeated to "
                 ">= 50 ms); speed-up = median of the per-round dense / pruned times (min-max). Every backend's "
                 "outputs are checked against eager first. Sparsity per variant: the one (0.20-0.60, step 0.05) whose "
                 f"shrunk MACs are nearest a {args.mac_target:g}x reduction"
                 + (f" (fixed: {args.sparsity})" if args.sparsity is not None else "") +
                 f". Load average at start: {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (1/5/15 min); per row in "
                 "the table.\n\n")
        write_results(args.out, text + latency_only(args))
        return
    rows = [run_seed(arch, seed, data, args) for arch in args.models for seed in args.seeds]
    tp_version = ""
    if rows and args.torch_pruning:
        import torch_pruning
        tp_version = f" Torch-Pruning {torch_pruning.__version__}."

    torch.set_num_threads(args.threads)  # the header reports the latency thread count
    text = header("Structured pruning that runs faster: channel pruning + shrinking on mnist-10k") + "\n"
    text += f"Training threads: {TRAIN_THREADS}; latency threads: {args.threads}.\n"
    text += (f"Load average at start: {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (1/5/15 min; the machine is shared, "
             f"so latencies are only compared within this process, interleaved).{tp_version}\n\n"
             f"Training images: {len(data.train_x):,}; test split: 2,000 images (one image = 0.05 points).\n\n")
    if rows:
        full = args.dense_epochs >= training_config(args.models[0]).epochs and not args.train_images
        text += ((f"Budget (full: the recommended {args.dense_epochs} epochs on all training images): dense " if full else
                  f"Budget (reduced to fit the shared 2-core machine): dense ") + f"{args.dense_epochs} epochs with the model's "
             f"recommended schedule (SGD, cosine), then the channels of every dependency group pruned "
             f"(`--round-to {' '.join(map(str, args.round_to))}`: the sparsity of each variant in its row, chosen for "
             f"a {args.mac_target:g}x MAC reduction on the shapes alone) and {args.finetune_epochs} fine-tuning epochs "
             f"at {FINETUNE_LR_FACTOR} x the learning rate, for both tools"
             + (" and for a copy of the dense model (the same-budget control every gap is taken to). " if args.dense_control
                else ". ")
             + ("No latency in this run (see the per-backend latency section).\n\n" if args.no_latency else
                f"Latency: float32 PyTorch eager, batch {BATCH}, {args.threads} threads, {args.repeats} interleaved "
                "rounds after warm-up; speed-up = median of per-round dense / pruned time (min-max in brackets).\n\n"))
    if rows:
        text += report(rows, args)
    if args.slim:
        slim_rows, results = slimming_sweep(args.seeds[0], data, args)
        png = RESULTS / f"{args.out}_slimming.png"
        plot_slimming(results, png)
        how = ("given" if args.slim_penalty is not None else "`matched_penalty`: |gamma| may move as far as under Liu "
               "et al.'s s = 1e-4 over their 160-epoch CIFAR schedule; not tuned on any accuracy")
        text += (f"\n## Network slimming on vgg_small (seed {args.seeds[0]})\n\n"
                 f"Sparsity training from scratch: {args.dense_epochs} epochs (zoo recommendation: "
                 f"{training_config('vgg_small').epochs}, SGD, cosine lr from {training_config('vgg_small').lr}) with "
                 f"s = {slim_penalty(data, args):.4g} x sum |gamma| added to the loss ({how}; "
                 "`NetworkSlimming.regularizers`), against the same schedule without it. Then the given fraction "
                 "of all BN'd channels with the smallest |gamma| is pruned under one global threshold, fine-tuned "
                 f"{args.slim_finetune_epochs} epoch(s) and shrunk. Plot: `{png.name}`.\n\n")
        text += table(["training", "channels pruned", "acc % pruned (no fine-tune)", "acc % fine-tuned", "MACs",
                       "params"], slim_rows)
        text += "\n" + "; ".join(f"{r['training']}: {100 * r['gamma_small']:.1f}% of the BatchNorm |gamma| below 0.01 "
                                 f"(median {r['gamma_median']:.3f})" for r in results if r["fraction"] == 0.0) + ".\n"
    write_results(args.out, text)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    main()
