"""Where LSQ's steps should start: the paper's 2 <|v|> / sqrt(Q_P) or the least-error grid (issue 13).

Usage: python benchmarks/qat_init.py [--models resnet20] [--seeds 0 1 2] [--float-epochs 15]
For each trained float model (benchmarks/common.trained_float, cached), BatchNorm is folded and LSQ is
attached exactly as flows/qat.py does before fine-tuning with batchnorm="fold" (its default above 2 bits), once per init ("lsq", "mse"); the table
gives the quantized start's accuracy and loss on the **last 1,000 training images** and the weights'
mean relative quantization error. Those images are part of the float model's training data (it
trains on all 8,000): the figures say how much of the trained function each quantized start keeps,
in sample; the test split is not used. No training here: this chooses the init that
benchmarks/qat.py then fine-tunes from.
"""
from __future__ import annotations

import argparse
import copy
import statistics

import torch

from common import MNIST_DIR, header, table, trained_float, write_results
from nncompress.api import apply_
from nncompress.flows.prune import calibration_batches
from nncompress.flows.qat import make_method
from nncompress.parametrize import transforms
from nncompress.quant.fold import fold_batchnorm_
from nncompress.quant.lsq import LSQWeight
from nncompress.train import evaluate
from nncompress.zoo import TensorLoader, load_dataset

VAL = 1000


@torch.no_grad()
def weight_error(model: torch.nn.Module) -> float:
    """Mean over LSQ-quantized layers of ||Q(w) - w|| / ||w||."""
    errors = []
    for module in model.modules():
        found = [t for t in transforms(module) if isinstance(t, LSQWeight)] if hasattr(module, "parametrizations") else []
        if found:
            w = module.parametrizations.weight.original
            errors.append(float((found[0](w) - w).norm() / w.norm()))
    return statistics.fmean(errors)


def start(model, data, bits: int, init: str) -> dict:
    """The LSQ start flows/qat.py would fine-tune from (BatchNorm folded, first/last at 8 bits)."""
    net = copy.deepcopy(model)
    fold_batchnorm_(net)
    apply_(net, make_method("lsq", bits, bits, model=model, init=init), data=calibration_batches(data))
    val = TensorLoader(data.train_x[-VAL:], data.train_y[-VAL:], 500)
    return {**evaluate(net, val), "weight_error": weight_error(net)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+", default=["resnet20"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--float-epochs", type=int, default=15)
    parser.add_argument("--bits", nargs="+", type=int, default=[4, 3, 2])
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = load_dataset("mnist-10k", MNIST_DIR)
    rows, means = [], []
    for arch in args.models:
        for bits in args.bits:
            found = {init: [] for init in ("lsq", "mse")}
            for seed in args.seeds:
                model, _ = trained_float(arch, data, seed, args.float_epochs)
                for init in found:
                    r = start(model, data, bits, init)
                    found[init].append(r)
                    rows.append([arch, seed, f"W{bits}A{bits}", init, f"{100 * r['accuracy']:.2f}", f"{r['loss']:.4f}",
                                 f"{r['weight_error']:.4f}"])
            for init, rs in found.items():
                means.append([arch, f"W{bits}A{bits}", init, len(rs), f"{100 * statistics.fmean(r['accuracy'] for r in rs):.2f}",
                              f"{statistics.fmean(r['loss'] for r in rs):.4f}",
                              f"{statistics.fmean(r['weight_error'] for r in rs):.4f}"])
    text = header("LSQ's starting steps: the paper's init vs the least-error grid (issue 13)") + "\n" + __doc__.split("\n\n", 1)[1]
    text += "\n" + table(["model", "bits", "init", "seeds", "acc % on the last 1,000 train images (start)", "loss there",
                          "weight rel. error"], means)
    text += "\n\nPer seed:\n\n" + table(["model", "seed", "bits", "init", "acc %", "loss", "weight rel. error"], rows)
    print(text)
    write_results("qat_init", text)


if __name__ == "__main__":
    main()
