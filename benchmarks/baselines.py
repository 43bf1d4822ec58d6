"""Dense baselines on mnist-10k (8,000 train / 2,000 test): accuracy and training time per seed.

Usage: python benchmarks/baselines.py [--seeds 3] [--models lenet300 lenet5]
"""
from __future__ import annotations

import argparse
import statistics

import torch

from common import MNIST_DIR, header, table, write_results
from nncompress.api import train_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--models", nargs="+", default=["lenet300", "lenet5"])
    args = parser.parse_args()
    torch.set_num_threads(2)
    rows = []
    for arch in args.models:
        accs, secs = [], []
        for seed in range(args.seeds):
            _, result = train_model(arch, "mnist-10k", data_dir=str(MNIST_DIR), seed=seed)
            accs.append(result["test_accuracy"])
            secs.append(result["seconds"])
            rows.append([arch, seed, result["epochs"], result["params"], result["macs"],
                         f"{100 * result['test_accuracy']:.2f}", f"{result['seconds']:.1f}"])
        rows.append([f"**{arch} mean**", "", "", "", "", f"**{100 * statistics.mean(accs):.2f}**",
                     f"{statistics.mean(secs):.1f}"])
    text = header("Dense baselines on mnist-10k") + "\n" + table(
        ["model", "seed", "epochs", "params", "MACs", "test acc %", "train s (2 threads)"], rows)
    write_results("baselines", text)


if __name__ == "__main__":
    main()
