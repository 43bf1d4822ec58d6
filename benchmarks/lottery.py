"""Lottery tickets on LeNet-300-100, mnist-10k (Frankle & Carbin 2019, fig. 3 style).

Usage: python benchmarks/lottery.py [--rounds 7] [--sparsity 0.95] [--seed 0]
Each round trains the current subnetwork from the rewound initial weights, prunes 35% of the
survivors (global magnitude), and rewinds. The control trains the same mask from a fresh random
initialization. Both use Adam (lr 1.2e-3, as in the paper), the same epochs and data order.
"""
from __future__ import annotations

import argparse

import torch

from common import MNIST_DIR, header, table, write_results
from nncompress.prune.lottery import find_ticket, masked_copy
from nncompress.prune.unstructured import MagnitudePrune
from nncompress.train import TrainConfig, evaluate, fit
from nncompress.zoo import build_model, load_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--sparsity", type=float, default=0.95)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(2)
    data = load_dataset("mnist-10k", MNIST_DIR)
    config = TrainConfig(epochs=args.epochs, lr=1.2e-3, optimizer="adam", weight_decay=0.0, schedule="constant",
                         seed=args.seed)

    def train(model, on_step):
        fit(model, data.train_loader(60, seed=args.seed), config, on_step=on_step, log=lambda s: None)

    def accuracy(model) -> float:
        return evaluate(model, data.test_loader())["accuracy"]

    torch.manual_seed(args.seed)
    model = build_model("lenet300", data.in_shape, 10)
    result = find_ticket(model, MagnitudePrune(sparsity=args.sparsity, scope="global"), args.rounds, train, accuracy)
    torch.manual_seed(args.seed + 12345)
    fresh = build_model("lenet300", data.in_shape, 10)
    dense_acc = result.rounds[0].accuracy
    rows = []
    for k, rnd in enumerate(result.rounds):
        control = masked_copy(fresh, rnd.masks)
        train(control, None)
        control_acc = accuracy(control) if rnd.masks else float("nan")
        rows.append([k, f"{100 * (1 - rnd.sparsity):.1f}%", f"{100 * rnd.accuracy:.2f}",
                     f"{100 * (rnd.accuracy - dense_acc):+.2f}", f"{100 * control_acc:.2f}" if rnd.masks else "-"])
        print(rows[-1], flush=True)
    text = header("Lottery tickets: LeNet-300-100 on mnist-10k (test split)") + "\n"
    text += (f"Adam lr 1.2e-3, {args.epochs} epochs per round, batch 60, global magnitude pruning of "
             f"{100 * (1 - (1 - args.sparsity) ** (1 / args.rounds)):.0f}% of survivors per round, rewinding to "
             f"the initial weights; seed {args.seed}. Round 0 is the dense network.\n\n")
    text += table(["round", "weights remaining", "ticket acc %", "ticket vs dense", "random reinit acc %"], rows)
    write_results("lottery", text)


if __name__ == "__main__":
    main()
