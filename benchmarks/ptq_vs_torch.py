"""Our W8A8 static PTQ vs PyTorch's own (torch.ao FX, x86 default qconfig), over several float seeds.

Usage: python benchmarks/ptq_vs_torch.py [--models lenet5 resnet20] [--seeds 10] [--epochs-resnet 6]

On the 2,000 mnist-10k test images one image is 0.05 points, and quantization flips a handful of
borderline images either way, so one float model cannot rank two int8 recipes. Here every seed
trains its own float model; both tools quantize that same model with the same 512 calibration
images. Besides accuracy we report how faithfully each int8 model reproduces its float model:
top-1 agreement (share of test images whose predicted class is unchanged), flips (images whose
correctness changes, either way) and the SQNR of the logits on all test images. A second table
pairs each of our configurations with torch.ao image by image (McNemar's exact test): how many
test images only ours gets right, how many only torch.ao gets right, and the two-sided p-value.
"""
from __future__ import annotations

import argparse
import math
import statistics

import torch

from common import MNIST_DIR, header, table, write_results
from nncompress.analysis.metrics import sqnr_db
from nncompress.flows.ptq import calibration_batches, quantize_copy
from nncompress.quant.ptq import LinearQuant
from nncompress.zoo import load_dataset
from ptq import torch_ao_ptq, train_float

OURS = {
    "nncompress W8A8 minmax (default)": LinearQuant(weight_bits=8, act_bits=8),
    "nncompress W8A8 mse": LinearQuant(weight_bits=8, act_bits=8, observer="mse"),
}
TORCH = "torch.ao FX W8A8 (x86 default)"


@torch.no_grad()
def fidelity(model: torch.nn.Module, float_logits: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> dict:
    """Accuracy, top-1 agreement with float, correctness flips and logits SQNR on (x, y)."""
    logits = torch.cat([model(chunk) for chunk in x.split(500)])
    pred, float_pred = logits.argmax(1), float_logits.argmax(1)
    flips = ((pred == y) != (float_pred == y)).sum().item()
    return {"acc": (pred == y).float().mean().item(), "agree": (pred == float_pred).float().mean().item(),
            "flips": flips, "sqnr": sqnr_db(float_logits, logits), "correct": pred == y}


def run_seed(arch: str, data, seed: int, epochs: int | None) -> dict[str, dict]:
    model = train_float(arch, data, seed, epochs)
    calib = calibration_batches(data)
    x, y = data.test_x, data.test_y
    with torch.no_grad():
        float_logits = torch.cat([model(chunk) for chunk in x.split(500)])
    results = {"float32": {"acc": (float_logits.argmax(1) == y).float().mean().item(),
                           "agree": 1.0, "flips": 0, "sqnr": float("inf"), "correct": float_logits.argmax(1) == y}}
    for name, method in OURS.items():
        results[name] = fidelity(quantize_copy(model, method, calib), float_logits, x, y)
    results[TORCH] = fidelity(torch_ao_ptq(model, calib, data.train_x[:1]), float_logits, x, y)
    for name, r in results.items():
        print(arch, seed, name, {k: v for k, v in r.items() if k != "correct"}, flush=True)
    return results


def rows_for(arch: str, per_seed: list[dict[str, dict]]) -> list[list[object]]:
    rows = []
    for name in per_seed[0]:
        runs = [seed_results[name] for seed_results in per_seed]
        accs = [100 * r["acc"] for r in runs]
        float_accs = [100 * s["float32"]["acc"] for s in per_seed]
        gap = statistics.mean(a - f for a, f in zip(accs, float_accs, strict=True))
        sqnr = "-" if name == "float32" else f"{statistics.mean(r['sqnr'] for r in runs):.1f}"
        rows.append([arch, name, " / ".join(f"{a:.2f}" for a in accs), f"**{statistics.mean(accs):.2f}**",
                     f"{gap:+.2f}", f"{100 * statistics.mean(r['agree'] for r in runs):.2f}",
                     sum(r["flips"] for r in runs), sqnr])
    return rows


def mcnemar_p(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value: P(a split at least this uneven | both equally good)."""
    n, k = only_a + only_b, min(only_a, only_b)
    return min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n) if n else 1.0


def paired_rows(arch: str, per_seed: list[dict[str, dict]]) -> list[list[object]]:
    rows = []
    for name in OURS:
        ours = torch.cat([s[name]["correct"] for s in per_seed])
        theirs = torch.cat([s[TORCH]["correct"] for s in per_seed])
        only_ours, only_torch = int((ours & ~theirs).sum()), int((theirs & ~ours).sum())
        rows.append([arch, name, len(per_seed) * len(per_seed[0][name]["correct"]), only_ours, only_torch,
                     f"{mcnemar_p(only_ours, only_torch):.2f}"])
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["lenet5", "resnet20"])
    parser.add_argument("--seeds", type=int, default=10, help="float seeds per model")
    parser.add_argument("--epochs-resnet", type=int, default=6)
    args = parser.parse_args()
    torch.set_num_threads(2)
    data = load_dataset("mnist-10k", MNIST_DIR)
    rows, pairs = [], []
    for arch in args.models:
        epochs = args.epochs_resnet if arch == "resnet20" else None
        per_seed = [run_seed(arch, data, seed, epochs) for seed in range(args.seeds)]
        rows += rows_for(arch, per_seed)
        pairs += paired_rows(arch, per_seed)
    text = header("W8A8 PTQ: nncompress vs torch.ao over several float seeds (mnist-10k, 2,000 test images)")
    text += ("\nEach seed trains its own float model; both tools quantize it with the same 512 calibration "
             "images. 'agree' = share of test images whose top-1 class equals float's; 'flips' = images "
             "whose correctness changed (either way), summed over seeds; logits SQNR on all 2,000 test "
             "images, mean over seeds.\n\n")
    text += table(["model", "configuration", "test acc % per seed", "mean acc %", "vs float (points)",
                   "agree %", "flips", "logits SQNR dB"], rows)
    text += "\nPaired with torch.ao, image by image over all seeds (McNemar's exact test):\n\n"
    text += table(["model", "ours", "test images x seeds", "only ours correct", "only torch.ao correct",
                   "p (two-sided)"], pairs)
    write_results("ptq_vs_torch", text)


if __name__ == "__main__":
    main()
