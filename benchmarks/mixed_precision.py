"""Learned mixed precision (NIPQ, DiffQ) vs the post-training bit-width search on mnist-10k (issue 13 B).

Usage: python benchmarks/mixed_precision.py [--model lenet5] [--seeds 0 1 2] [--float-epochs 15]
           [--stages 3,1,2] [--target-bits 5] [--candidates 4,8] [--lambdas 0.02 0.1 0.5] [--threads 1]
Per seed: one float model (the zoo's recommended training unless --float-epochs), then on copies of it
- PTQ bit search (no training) at the same average-bits budget, per network / layer / channel:
  measured loss increase of each layer alone at each bit-width on 1,024 training images, greedy
  allocation (`quant/bitsearch.py`);
- the per-layer search followed by a fine-tune through its fake quantizers for all of NIPQ's epochs (same budget);
- NIPQ: stage 1 pseudo-noise + learned bits and range toward the target average bits, stage 2 pull
  to the candidates and snap, stage 3 linear fake quantization at the chosen bits, fine-tuned;
- (first seed only) a DiffQ lambda sweep: size penalty lambda * average bits, bits rounded, same fine-tune.
- a same-budget float control per seed: the float model trained through NIPQ's phases, nothing quantized.
Weights only (activations stay float); average bits are weighted by parameter count over every
Conv / Linear layer. Accuracy on the 2,000 test images.
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
from dataclasses import replace
from pathlib import Path

import torch

from common import MNIST_DIR, RESULTS, header, table, trained_float, write_results
from nncompress.api import training_config
from nncompress.flows.control import same_budget_control
from nncompress.flows.mixed_precision import (bitsearch_model, learn_mixed_precision, mixed_precision_phases,
                                             weight_size)
from nncompress.quant.bitsearch import apply_bits_
from nncompress.quant.convert import convert_
from nncompress.quant.mixed_precision import NIPQ, DiffQ
from nncompress.train import evaluate, fit
from nncompress.zoo import load_dataset

def float_model(arch: str, data, seed: int, epochs: int | None):
    """The trained float model of this seed and its training config (`common.trained_float`'s cache)."""
    config = training_config(arch, seed=seed, epochs=epochs)
    model, _ = trained_float(arch, data, seed, config.epochs)
    return model, config


def acc(model, data) -> float:
    return evaluate(model, data.test_loader())["accuracy"]


def layer_counts(model) -> dict[str, int]:
    return {n: m.weight.numel() for n, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))}


def search_and_finetune(model, data, bits: dict[str, float], config, epochs: int) -> float:
    """The per-layer PTQ allocation, then `epochs` of fine-tuning through the fake quantizers."""
    net = copy.deepcopy(model)
    layers = {n: m for n, m in net.named_modules() if n in bits}
    apply_bits_(layers, {n: int(b) for n, b in bits.items()}, "layer")
    if epochs:
        fit(net, data.train_loader(64, seed=config.seed + 300), replace(config, epochs=epochs, lr=config.lr * 0.1),
            progress=False)
    return acc(net, data)


def plot_bits(path: Path, layers: list[str], series: dict[str, dict[str, float]], title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(layers) + 2), 3.6))
    width = 0.8 / len(series)
    for i, (label, bits) in enumerate(series.items()):
        ax.bar([k + i * width for k in range(len(layers))], [bits[n] for n in layers], width, label=label)
    ax.set_xticks([k + 0.4 - width / 2 for k in range(len(layers))], layers, rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("weight bits")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="lenet5")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--float-epochs", type=int, default=None)
    parser.add_argument("--stages", default="3,1,2", help="NIPQ epochs of stages 1,2,3 (DiffQ: 1 and 3)")
    parser.add_argument("--target-bits", type=float, default=5.0)
    parser.add_argument("--candidates", default="4,8")
    parser.add_argument("--lambdas", type=float, nargs="*", default=[0.02, 0.1, 0.5])
    parser.add_argument("--bit-lr", type=float, default=0.05)
    parser.add_argument("--options", default="2,3,4,5,6,7,8")
    parser.add_argument("--calib", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--name", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    stages = tuple(int(s) for s in args.stages.split(","))
    candidates = tuple(int(c) for c in args.candidates.split(","))
    options = tuple(int(o) for o in args.options.split(","))
    data = load_dataset("mnist-10k", MNIST_DIR)
    name = args.name or f"mixed_precision_{args.model}"
    rows, sweep, per_method, controls = [], [], {}, []
    plot_series = {}
    for seed in args.seeds:
        model, config = float_model(args.model, data, seed, args.float_epochs)
        float_acc = acc(model, data)
        control, _ = same_budget_control(model, data, mixed_precision_phases(config, epochs=stages))
        control_acc = acc(control, data)
        controls.append((float_acc, control_acc))
        print(f"seed {seed}: float {100 * float_acc:.2f}, same-budget control {100 * control_acc:.2f}", flush=True)
        counts = layer_counts(model)

        def add(method: str, avg_bits: float, bits: dict, accuracy: float) -> None:
            size = weight_size(bits, counts)["weight_bytes"] / 1024
            rows.append([method, seed, f"{100 * float_acc:.2f}", f"{100 * control_acc:.2f}", f"{avg_bits:.3f}",
                         f"{size:.1f}", f"{100 * accuracy:.2f}", f"{100 * (accuracy - float_acc):+.2f}",
                         f"{100 * (accuracy - control_acc):+.2f}"])
            per_method.setdefault(method, []).append((avg_bits, accuracy, float_acc, control_acc))
            print(rows[-1], flush=True)

        search = bitsearch_model(model, data, args.target_bits, options=options, calib_images=args.calib)
        for level, found in search.items():
            add(f"PTQ search per {level}", found["average_bits"], found["bits"], found["accuracy"])
        ft = search_and_finetune(model, data, search["layer"]["bits"], config, sum(stages))
        add(f"PTQ per-layer search + {sum(stages)} ep fine-tune", search["layer"]["average_bits"], search["layer"]["bits"], ft)

        nipq_model = copy.deepcopy(model)
        method = NIPQ(target_bits=args.target_bits, candidates=candidates)
        report = learn_mixed_precision(nipq_model, data, method, config, epochs=stages, bit_lr=args.bit_lr,
                                       progress=False)
        add(f"NIPQ (stages {args.stages})", report["average_bits"], report["bits"], report["accuracy"])
        converted = acc(convert_(copy.deepcopy(nipq_model)), data)
        if seed == args.seeds[0]:
            plot_series = {"NIPQ": report["bits"], "PTQ per-layer search": search["layer"]["bits"]}
            stage1 = report["stages"][0]
            nipq_detail = (f"NIPQ seed {seed}: stage 1 ended at {stage1['average_bits']:.3f} average bits (continuous), "
                           f"accuracy with round(B) {100 * stage1['accuracy_round_b']:.2f}%; after stage 2 snap "
                           f"{report['stages'][1]['average_bits']:.3f} bits, accuracy before fine-tune "
                           f"{100 * report['stages'][1]['accuracy_before_finetune']:.2f}%; after stage 3 "
                           f"{100 * report['accuracy']:.2f}%; after `convert_` (stored integer codes) {100 * converted:.2f}%.\n")
            diffq_phases = mixed_precision_phases(config, epochs=stages, nipq=False)
            diffq_control = acc(same_budget_control(model, data, diffq_phases)[0], data) if args.lambdas else None
            for lam in args.lambdas:
                net = copy.deepcopy(model)
                rep = learn_mixed_precision(net, data, DiffQ(size_weight=lam), config, epochs=(stages[0], 0, stages[2]),
                                            bit_lr=args.bit_lr, progress=False)
                sweep.append([lam, f"{rep['average_bits']:.3f}", f"{rep['weight_bytes'] / 1024:.1f}",
                              f"{rep['compression']:.1f}x", f"{100 * float_acc:.2f}", f"{100 * diffq_control:.2f}",
                              f"{100 * rep['accuracy']:.2f}", f"{100 * (rep['accuracy'] - diffq_control):+.2f}",
                              " ".join(f"{n}:{b}" for n, b in rep["bits"].items())])
                print(sweep[-1], flush=True)
    png = RESULTS / f"{name}_bits.png"
    layers = list(layer_counts(model))
    plot_bits(png, layers, plot_series, f"{args.model}: per-layer weight bits at <= {args.target_bits} average (seed {args.seeds[0]})")
    means = []
    for method, values in per_method.items():
        bits, accs, floats, ctrls = zip(*values)
        gaps = [a - c for a, c in zip(accs, ctrls)]
        stderr = statistics.stdev(gaps) / len(gaps) ** 0.5 if len(gaps) > 1 else float("nan")
        means.append([method, len(values), f"{statistics.mean(bits):.3f}", f"{100 * statistics.mean(floats):.2f}",
                      f"{100 * statistics.mean(ctrls):.2f}", f"{100 * statistics.mean(accs):.2f}",
                      f"{100 * (statistics.mean(accs) - statistics.mean(floats)):+.2f}",
                      f"**{100 * statistics.mean(gaps):+.2f}**", f"{100 * stderr:.2f}", f"{100 * min(gaps):+.2f}"])
    load = os.getloadavg()
    text = header(f"Mixed precision: {args.model} on mnist-10k, target {args.target_bits} average weight bits")
    text += (f"Machine load (1/5/15 min) at the end: {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} on {os.cpu_count()} "
             f"cores. Float training: {config.epochs} epochs (lr {config.lr}, {config.schedule}); "
             f"NIPQ stages {args.stages} epochs at lr x0.1, bit lr {args.bit_lr}; candidates {candidates}; PTQ options "
             f"{options}, {args.calib} calibration images. Weights only; sizes are sum b_i N_i / 8 over Conv/Linear "
             f"weights (float32: {sum(counts.values()) * 4 / 1024:.1f} KiB).\n\n")
    text += (f"Same-budget control: each seed's float model trained through NIPQ's phases ({sum(stages)} epochs at "
             f"lr x0.1, the same loader seeds) with nothing quantized (`flows.control.same_budget_control`); the PTQ "
             f"search + fine-tune row gets the same {sum(stages)} epochs through its fake quantizers (as one cosine "
             f"schedule on loader seed +300, where the control replays NIPQ's three phases: the same steps, another "
             f"schedule and data order). DiffQ's control leaves out stage 2, as DiffQ does.\n\n")
    text += "## Means over seeds\n\n" + table(["method", "seeds", "avg bits", "float acc %", "control acc %", "acc %",
                                                "vs float (points)", "vs control (points)", "standard error",
                                                "worst seed vs control"], means)
    text += "\n" + nipq_detail
    text += f"\nPer-layer bits (seed {args.seeds[0]}): `{png.name}`\n\n" + table(
        ["layer", "params", *plot_series], [[n, counts[n], *(s[n] for s in plot_series.values())] for n in layers])
    if sweep:
        text += f"\n## DiffQ lambda sweep (seed {args.seeds[0]}; penalty lambda x average bits)\n\n" + table(
            ["lambda", "avg bits", "weights KiB", "vs float32", "float acc %",
             f"control acc % ({stages[0] + stages[2]} epochs)", "acc %", "vs control (points)", "per-layer bits"], sweep)
    text += "\n## Every run\n\n" + table(["method", "seed", "float acc %", "control acc %", "avg bits", "weights KiB", "acc %",
                                                  "vs float", "vs control"], rows)
    write_results(name, text)


if __name__ == "__main__":
    main()
