"""Unstructured sparse execution wired in: `use_sparse_kernels_` picks dense or torch-CSR kernels per
layer by measuring, and the end-to-end speed-up of the whole model is timed against the dense model.

Usage: python benchmarks/sparse_execution.py [--threads 2] [--rounds 15] [--clock wall|cpu]

On a loaded shared machine wall-clock timings are dominated by preemption; `--threads 1 --clock cpu`
times with this process's CPU time instead (time.process_time), which other processes do not inflate.

Models: LeNet-300-100 pruned with the settings of benchmarks/pruning.py (92% of fc1/fc2, 74% of fc3;
weights from a short dense training: the timing depends only on the sparsity pattern), LeNet-5 pruned
to 92.5% globally (convolutions as im2col + CSR), and a 4096-4096-4096 MLP with 95% random sparsity
(the "big Linear"). For each batch size the selection runs on a batch of that size, then the dense
model (parametrizations removed) and the selected model are timed in interleaved rounds (median of
per-round ratios, min-max), after checking their outputs agree.
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import time

import torch
from torch import nn

from common import MNIST_DIR, header, table, write_results
from nncompress.api import training_config
from nncompress.config import run_method
from nncompress.parametrize import squash_
from nncompress.prune.unstructured import MagnitudePrune
from nncompress.runtime.kernel_select import interleaved_times, use_sparse_kernels_
from nncompress.train import fit
from nncompress.zoo import build_model, load_dataset


def pruned_zoo(arch: str, dataset, method: MagnitudePrune, epochs: int) -> nn.Module:
    torch.manual_seed(0)
    model = build_model(arch, dataset.in_shape, dataset.num_classes)
    fit(model, dataset.train_loader(64, seed=0), training_config(arch, epochs=epochs, seed=0))
    run_method(model, method)
    return squash_(model).eval()


def big_mlp(sparsity: float) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4096, 4096), nn.ReLU(), nn.Linear(4096, 4096))
    with torch.no_grad():
        for layer in (model[0], model[2]):
            layer.weight.mul_(torch.rand_like(layer.weight) >= sparsity)
    return model.eval()


def measure(label: str, dense: nn.Module, x: torch.Tensor, rounds: int, clock) -> tuple[list, list]:
    sparse = copy.deepcopy(dense)
    with torch.no_grad():
        choices = use_sparse_kernels_(sparse, x, clock=clock)
        torch.testing.assert_close(sparse(x), dense(x), rtol=1e-4, atol=1e-4)
        base, cand = interleaved_times(lambda: dense(x), lambda: sparse(x), rounds=rounds, clock=clock)
    ratios = [b / c for b, c in zip(base, cand)]
    per_layer = [[label, x.shape[0], c.name, c.kind, "x".join(map(str, c.shape)), f"{100 * (1 - c.density):.1f}%",
                  "-" if c.dense_ms is None else f"{c.dense_ms:.3f}", "-" if c.sparse_ms is None else f"{c.sparse_ms:.3f}",
                  "-" if c.speedup is None else f"{c.speedup:.2f}x", f"**{c.choice}**", c.reason] for c in choices]
    chosen = sum(c.choice == "sparse" for c in choices)
    end_to_end = [label, x.shape[0], f"{chosen}/{len(choices)}", f"{statistics.median(base):.3f}",
                  f"{statistics.median(cand):.3f}", f"**{statistics.median(ratios):.2f}x**",
                  f"{min(ratios):.2f}-{max(ratios):.2f}"]
    return per_layer, end_to_end


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--train-epochs", type=int, default=2)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="cpu: time.process_time (this process's CPU time; use with --threads 1 on a loaded machine)")
    args = parser.parse_args()
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    torch.set_num_threads(args.threads)
    dataset = load_dataset("mnist-10k", MNIST_DIR)
    models = {
        "LeNet-300-100 (92% / 92% / 74%)": pruned_zoo("lenet300", dataset, MagnitudePrune(
            sparsity=0.92, layer_sparsity={"fc3": 0.74}), args.train_epochs),
        "LeNet-5 (92.5% global)": pruned_zoo("lenet5", dataset, MagnitudePrune(sparsity=0.925, scope="global"),
                                             args.train_epochs),
        "MLP 4096-4096-4096 (95%)": big_mlp(0.95),
    }
    load_start = os.getloadavg()
    layer_rows, model_rows = [], []
    for label, model in models.items():
        shape = (4096,) if "4096" in label else dataset.in_shape
        for batch in (1, 64):
            x = torch.randn(batch, *shape) if "4096" in label else dataset.test_x[:batch]
            per_layer, end_to_end = measure(label, model, x, args.rounds, clock)
            layer_rows += per_layer
            model_rows.append(end_to_end)
            print(end_to_end, flush=True)
    load_end = os.getloadavg()
    clock_name = "CPU time of the process (time.process_time)" if args.clock == "cpu" else "wall time (perf_counter)"
    text = header(f"Sparse execution wired in: per-layer kernel choice and end-to-end speed-up, {args.threads} "
                  f"thread(s), {args.clock} clock")
    text += (f"\n**Measured on a loaded machine**: load average {load_start[0]:.1f} / {load_start[1]:.1f} / "
             f"{load_start[2]:.1f} (1/5/15 min) before timing and {load_end[0]:.1f} after, on a shared 2-core VM. "
             f"Clock: {clock_name}. Interleaved rounds (dense, selected, dense, ...), median of the per-round ratios "
             "with their min-max; absolute wall times are inflated by the load.\n\n")
    text += ("`runtime/kernel_select.py: use_sparse_kernels_(model, example)` measures each Linear / Conv2d (groups=1) "
             "with at most 50% non-zeros on its real input (dense F.linear / F.conv2d vs torch CSR; convolutions as "
             "im2col + CSR), median of 7 interleaved rounds, and swaps in the sparse kernel when it is >= 1.1x faster. "
             "The selection is made separately for each batch size.\n\n### End to end (whole model, dense vs selected)\n\n")
    text += table(["model", "batch", "layers sparse", "dense ms", "selected ms", "speed-up", "range"], model_rows)
    text += "\n### Per-layer choice\n\n"
    text += table(["model", "batch", "layer", "type", "weight", "sparsity", "dense ms", "sparse ms", "dense / sparse",
                   "choice", "why"], layer_rows)
    write_results("sparse_execution", text)


if __name__ == "__main__":
    main()
