"""Entropy-penalized reparameterization (Oktay et al., ICLR 2020) on the LeNets: rate vs accuracy
over a lambda sweep, in real .nnc bytes, against the same-budget dense control.

Usage: nice -n 19 python benchmarks/entropy_coding.py [--seeds 1] [--models lenet300 lenet5]
           [--lambdas 1e-6 3e-6 1e-5] [--epochs lenet300=10 lenet5=6] [--threads 1]

Per model and seed, on mnist-10k's first 7,000 training images (the last 1,000 are the validation
split; the 2,000-image test split is evaluated once, never used to choose):
  dense    the model trained with its recipe (flows.prune.dense_model);
  EPR      `EntropyPenalized(rate_weight=lambda)` applied to every Conv / Linear weight, then one
           Adam phase of E epochs with the rate regularizer; biases rounded to float16; written to
           .nnc (integer latents range-coded, encode/rans.py) and the accuracy is the decoded file's;
  control  the dense model trained through exactly the same phase (same config, loader seed and
           steps: flows/control.py) with nothing compressed.
compression = fp32 parameter bytes / file bytes. rate = the learned model's bits of the stored
latents (sum -log2 p(round(phi))); coded = the latents' rANS sections. Per-seed results are cached
in runs/entropy_coding/.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
from pathlib import Path

import torch

from common import MNIST_DIR, accuracies, cached_sweep, header, sweep_cells, table, write_results
from nncompress.analysis.metrics import count_params
from nncompress.encode.container import read_nnc, write_nnc
from nncompress.encode.deep_compression import round_biases_fp16_
from nncompress.encode.model import decode_model, encode_model
from nncompress.flows.control import TrainingPhase, same_budget_control
from nncompress.flows.prune import dense_model
from nncompress.quant.entropy_penalized import EntropyPenalized, model_rate_bits
from nncompress.api import apply_
from nncompress.train import TrainConfig
from nncompress.zoo import load_dataset

CACHE = Path(__file__).resolve().parents[1] / "runs" / "entropy_coding"
LR = 1e-3
INIT_BITS = 6



def phase(epochs: int, seed: int) -> TrainingPhase:
    return TrainingPhase(TrainConfig(epochs=epochs, lr=LR, optimizer="adam", weight_decay=0.0, seed=seed + 500),
                         seed + 500, 64, "entropy-penalized")


def epr_row(dense, arch: str, val, test, lam: float, epochs: int, seed: int) -> dict:
    model = copy.deepcopy(dense)
    method = EntropyPenalized(rate_weight=lam, init_bits=INIT_BITS)
    apply_(model, method)
    phase(epochs, seed).run(model, val, regularizers=method.regularizers(model), progress=False)
    round_biases_fp16_(model)
    model.eval()
    rates = {k: float(v.detach()) for k, v in model_rate_bits(model).items()}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.nnc"
        size = write_nnc(path, encode_model(model, {"arch": arch, "in_shape": list(val.in_shape),
                                                    "num_classes": val.num_classes}))
        nnc = read_nnc(path)
    decoded = decode_model(nnc).eval()
    x = next(iter(test.test_loader()))[0]
    exact = all(torch.equal(decoded.get_submodule(n).weight, model.get_submodule(n).weight) for n in rates) \
        and torch.equal(decoded(x), model(x))
    coded = sum(s[-1]["latents"]["bytes"] for s in nnc.storage.values() if "latents" in s[-1])
    return {**accuracies(decoded, val, test), "bytes": size, "rate_bits": sum(rates.values()), "coded_bytes": coded,
            "layer_rate_bits": rates, "exact": exact,
            "nonzero": sum(int((dict(decoded.named_parameters())[n + ".weight"] != 0).sum()) for n in rates)}


def run_seed(arch: str, val, test, seed: int, lambdas: list[float], epochs: int) -> dict:
    dense, _, _ = dense_model(arch, val, seed)
    dense.eval()
    control, info = same_budget_control(dense, val, [phase(epochs, seed)])
    rows = {f"{lam:g}": epr_row(dense, arch, val, test, lam, epochs, seed) for lam in lambdas}
    return {"arch": arch, "seed": seed, "epochs": epochs, "dense": accuracies(dense, val, test),
            "control": accuracies(control, val, test), "control_steps": info["steps"],
            "fp32_bytes": 4 * count_params(dense), "rows": rows}


def cached_seed(arch, val, test, seed, lambdas, epochs, threads) -> dict:
    return cached_sweep(CACHE / f"{arch}-seed{seed}-e{epochs}-threads{threads}.json", lambdas,
                        lambda missing: run_seed(arch, val, test, seed, missing, epochs))


def summary(arch: str, runs: list[dict], lambdas: list[float]) -> list[list[object]]:
    out = []
    for lam in lambdas:
        rows, head, tail = sweep_cells(runs, f"{lam:g}")
        out.append([arch, f"{lam:g}", *head, f"{statistics.mean(x['rate_bits'] for x in rows) / 8:,.0f}",
                    f"{statistics.mean(x['coded_bytes'] for x in rows):,.0f}",
                    f"{100 * statistics.mean(x['nonzero'] / (r['fp32_bytes'] / 4) for x, r in zip(rows, runs)):.1f}",
                    *tail])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--models", nargs="+", default=["lenet300", "lenet5"])
    parser.add_argument("--lambdas", nargs="+", type=float, default=[1e-6, 3e-6, 1e-5])
    parser.add_argument("--epochs", nargs="+", default=["lenet300=10", "lenet5=6"], help="EPR epochs per model")
    parser.add_argument("--note", default="")
    args = parser.parse_args()
    epochs = {k: int(v) for k, v in (e.split("=") for e in args.epochs)}
    torch.set_num_threads(args.threads)
    test = load_dataset("mnist-10k", MNIST_DIR)
    val = test.with_validation(1000)
    rows, dense_rows = [], []
    for arch in args.models:
        runs = []
        for seed in range(args.seeds):
            runs.append(cached_seed(arch, val, test, seed, args.lambdas, epochs[arch], args.threads))
            print(arch, seed, {k: (v["val"], v["test"], v["bytes"]) for k, v in runs[-1]["rows"].items()}, flush=True)
        rows += summary(arch, runs, args.lambdas)
        dense_rows.append([arch, runs[0]["fp32_bytes"], epochs[arch], runs[0]["control_steps"],
                           f"{100 * statistics.mean(r['dense']['test'] for r in runs):.2f}",
                           f"{100 * statistics.mean(r['control']['test'] for r in runs):.2f}"])
    text = header(f"Entropy-penalized reparameterization (Oktay et al. 2020), {args.seeds} seed(s)") + "\n"
    if args.note:
        text += f"**Note:** {args.note}\n\n"
    text += __doc__.split("\n\n", 2)[2].split("Per-seed results")[0].strip() + "\n\n"
    text += (f"Settings: Adam lr {LR:g}, no weight decay, cosine schedule, batch 64, init_bits {INIT_BITS}, density "
             "filters (3, 3, 3); lambda = loss per bit of the whole model.\n\n")
    text += table(["model", "fp32 bytes", "EPR epochs", "control steps", "dense test %", "control test %"], dense_rows)
    text += "\n" + table(["model", "lambda", "file B", "compression", "rate B", "coded B", "nonzero %", "val %",
                          "val gap", "test %", "control test %", "test gap (mean ± se)", "worst seed", "decode exact"],
                         rows)
    write_results("entropy_coding", text)


if __name__ == "__main__":
    main()
