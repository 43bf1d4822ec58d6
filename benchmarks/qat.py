"""Quantization-aware training on mnist-10k: LSQ and PACT vs PTQ with the same bits (issue 13 A).

Usage: python benchmarks/qat.py [--models lenet5] [--seeds 0 1 2] [--float-epochs 6] [--qat-epochs 2]
       [--configs lsq:4:4 lsq:3:3 lsq:2:2 pact:4:4] [--threads 1]
Per seed: one float model is trained (the zoo recipe, `--float-epochs`), then every configuration
quantizes a copy of it: PTQ (LinearQuant, min-max, the same bits and layers) and QAT (BatchNorm
folded, fake quantizers, `--qat-epochs` of fine-tuning at 0.1x the float learning rate, convert_).
As in the LSQ and PACT papers the first and last layer stay at 8 bits (weights and inputs) in both.
The converted model is also run by the integer engine and ONNX Runtime (8-bit-and-below grids).
Results of every model run so far are kept in results/qat.json and the table is rebuilt from them.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from common import MNIST_DIR, RESULTS, header, table, trained_float, write_results
from nncompress.flows.ptq import calibration_batches, quantize_copy
from nncompress.api import training_config
from nncompress.flows.control import same_budget_control
from nncompress.flows.distill import DistillConfig
from nncompress.flows.qat import make_method, ptq_twin, qat_model, qat_phases
from nncompress.train import evaluate
from nncompress.zoo import load_dataset

STORE = RESULTS / "qat.json"


KD = DistillConfig(alpha=0.5, temperature=4.0)  # "+kd" configs: distil the float model during QAT


def run_seed(arch: str, data, seed: int, configs: list[tuple[str, int, int, int | None]], float_epochs: int,
             qat_epochs: int, first_last_bits: int | None = 8, lr_factor: float = 0.1) -> list[dict]:
    model, _ = trained_float(arch, data, seed, float_epochs)
    calib = calibration_batches(data)
    controls: dict[tuple[bool, str], float] = {}

    def control_accuracy(distilled: bool, batchnorm: str) -> float:
        """The same-budget float control: the float model trained through QAT's phases (distilled
        from the same float model when QAT is)."""
        if (distilled, batchnorm) not in controls:
            phases = qat_phases(training_config(arch, seed=seed), epochs=qat_epochs, seed=seed, lr_factor=lr_factor,
                                batchnorm=batchnorm)
            control, _ = same_budget_control(model, data, phases, distill=KD if distilled else None)
            controls[distilled, batchnorm] = evaluate(control, data.test_loader())["accuracy"]
        return controls[distilled, batchnorm]

    rows = []
    for name, wb, ab, skip in configs:
        kind, init, flags = split_method(name)
        kd, batchnorm = "kd" in flags, "train" if "bn" in flags else "fold"
        method = make_method(kind, wb, ab, model=model, skip_bits=skip, first_last_bits=first_last_bits, init=init)
        ptq_acc = evaluate(quantize_copy(model, ptq_twin(method), calib), data.test_loader())["accuracy"]
        began = time.perf_counter()
        _, _, rep = qat_model(arch, data, method, epochs=qat_epochs, seed=seed, float_model=model, progress=False,
                              lr_factor=lr_factor,
                              skip_bits=skip, distill=KD if kd else None,
                              batchnorm=batchnorm)
        rows.append({"arch": arch, "seed": seed, "method": name, "w": wb, "a": ab, "skip": skip, "ptq": ptq_acc,
                     "control": control_accuracy(kd, rep["batchnorm"]), "batchnorm": rep["batchnorm"],
                     "first_last": first_last_bits,
                     "seconds": time.perf_counter() - began,
                     **{k: rep.get(k) for k in ("float_accuracy", "initial_accuracy", "qat_accuracy",
                                                "converted_accuracy", "converted_exact", "engine_accuracy",
                                                "onnx_accuracy", "engine_error", "onnx_error", "oscillation",
                                                "live_accuracy", "folded_accuracy", "batchnorm_fold", "phases",
                                                "epochs", "lr")}})
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "oscillation"}), flush=True)
    return rows


def parse_config(text: str) -> tuple[str, int, int, int | None]:
    """"lsq:4:4" (method, weight bits, act bits), "lsq:2:2:8" (+ skip-path bits: precision highway);
    "lsq/mse:3:3": LSQ with its steps started at the least-error grid (quant/lsq.py `init`);
    "lsq+kd:2:2": distilling the float model (`KD`; the control is distilled alike); "lsq+bn:2:2":
    BatchNorm live during QAT, folded after (see `split_method`)."""
    parts = text.split(":")
    return parts[0], int(parts[1]), int(parts[2]), int(parts[3]) if len(parts) > 3 else None


def split_method(name: str) -> tuple[str, str | None, set[str]]:
    """"lsq/mse" -> ("lsq", "mse", set()); "pact" -> ("pact", None, set()); "lsq+kd+bn" -> ("lsq",
    None, {"kd", "bn"}): "+kd" distils the float model during QAT (`KD`, and the control alike),
    "+bn" keeps BatchNorm live during QAT and folds it after (flows/qat.py batchnorm="train")."""
    full = name
    name, *flags = name.split("+")
    unknown = set(flags) - {"kd", "bn"}
    if unknown:
        raise SystemExit(f"unknown config suffix +{sorted(unknown)[0]} in {full} (known: +kd, +bn)")
    method, _, init = name.partition("/")
    return method, init or None, set(flags)


def label(r: dict) -> str:
    skip = f", {r['skip']}-bit skips" if r.get("skip") else ""
    edges = ", first/last too" if r.get("first_last", 8) is None else ""
    method, init, flags = split_method(r["method"])
    init = f", {init.upper()} init" if init else ""
    kd = f", distilled (alpha {KD.alpha}, T {KD.temperature:g})" if "kd" in flags else ""
    live = r.get("batchnorm", "train" if r.get("batchnorm_fold") else "fold") == "train"  # older stores: no "batchnorm"
    bn = ", BN live, folded after" if live else ""
    return f"{method.upper()} W{r['w']}A{r['a']}{init}{bn}{kd}{skip}{edges}"


def pct(values: list[float]) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    mean = 100 * statistics.fmean(values)
    return f"{mean:.2f} ± {100 * statistics.stdev(values):.2f}" if len(values) > 1 else f"{mean:.2f}"


def summary(rows: list[dict]) -> str:
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["arch"], label(r)), []).append(r)
    out = []
    controlled = all(r.get("control") is not None for r in rows)
    for (arch, name), rs in groups.items():
        mean = lambda key: statistics.fmean(r[key] for r in rs)  # noqa: E731
        control = [pct([r["control"] for r in rs]), f"{100 * (mean('qat_accuracy') - mean('control')):+.2f}"] if controlled else []
        last_osc = [r["oscillation"][-1] for r in rs if r["oscillation"] and split_method(r["method"])[0] == "lsq"]  # LSQ weights only
        out.append([arch, name, len(rs), rs[0]["epochs"], pct([r["float_accuracy"] for r in rs]),
                    pct([r["ptq"] for r in rs]), pct([r["qat_accuracy"] for r in rs]),
                    f"{100 * (mean('qat_accuracy') - mean('float_accuracy')):+.2f}", *control,
                    f"{100 * (mean('qat_accuracy') - mean('ptq')):+.2f}",
                    "yes" if all(r["converted_exact"] and r["converted_accuracy"] == r["qat_accuracy"] for r in rs) else "NO",
                    pct([r.get("engine_accuracy") for r in rs]), pct([r.get("onnx_accuracy") for r in rs]),
                    f"{statistics.fmean(o['oscillating_fraction'] for o in last_osc):.2e}" if last_osc else "-"])
    return table(["model", "QAT", "seeds", "QAT epochs", "float %", "PTQ %", "QAT %", "QAT - float",
                  *(["float control %", "QAT - control"] if controlled else []), "QAT - PTQ",
                  "convert_ exact", "int engine %", "ONNX RT %", "oscillating weights (last epoch)"], out)


def per_seed(rows: list[dict]) -> str:
    return table(["model", "seed", "config", "float %", "PTQ %", "QAT init %", "BN live, before fold %",
                  "just folded %", "QAT %", "engine %", "ONNX %", "s"],
                 [[r["arch"], r["seed"], label(r), *[_p(r.get(k)) for k in (
                     "float_accuracy", "ptq", "initial_accuracy", "live_accuracy", "folded_accuracy", "qat_accuracy",
                     "engine_accuracy", "onnx_accuracy")],
                   round(r["seconds"])] for r in rows])


def _p(value: float | None) -> str:
    return f"{100 * value:.2f}" if value is not None else "-"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", nargs="+", default=["lenet5"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--float-epochs", type=int, default=6)
    parser.add_argument("--qat-epochs", type=int, default=2)
    parser.add_argument("--lr-factor", type=float, default=0.1, help="QAT (and control) learning rate / the float recipe's")
    parser.add_argument("--configs", nargs="+", default=["lsq:4:4", "lsq:3:3", "lsq:2:2", "pact:4:4"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--first-last-bits", type=int, default=8, help="bits of the first and last layer; 0: same as the rest")
    parser.add_argument("--store", default=str(STORE), help="JSON file collecting the rows (one per parallel run)")
    parser.add_argument("--merge", nargs="+", help="only rebuild the results file from these stores (seeds merged)")
    parser.add_argument("--results", default="qat", help="results file name (benchmarks/results/NAME.md)")
    parser.add_argument("--note", default="", help="a note on this run for the results file (replaces the "
                        "history of the earlier qat.md runs)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)  # the header records it; the runs' own headers are quoted per model
    if args.merge:
        write_results(args.results, report(merge(args.merge), args.note))
        return
    configs = [parse_config(c) for c in args.configs]
    data = load_dataset("mnist-10k", MNIST_DIR)
    store_path = Path(args.store)
    store = json.loads(store_path.read_text()) if store_path.is_file() else {}
    began = time.perf_counter()
    for arch in args.models:
        rows = [row for seed in args.seeds for row in run_seed(arch, data, seed, configs, args.float_epochs, args.qat_epochs,
                                                               args.first_last_bits or None, args.lr_factor)]
        store[arch] = {"rows": rows, "float_epochs": args.float_epochs, "qat_epochs": args.qat_epochs,
                       "lr_factor": args.lr_factor,
                       "seeds": args.seeds, "threads": args.threads, "load": os.getloadavg(),
                       "header": header("QAT"), "minutes": (time.perf_counter() - began) / 60}
        store_path.write_text(json.dumps(store, indent=1))
    if store_path == STORE:
        write_results(args.results, report(store, args.note))


def merge(paths: list[str]) -> dict:
    """One store from several (parallel runs of other seeds): rows concatenated per model."""
    merged: dict = {}
    for path in paths:
        for arch, run in json.loads(Path(path).read_text()).items():
            if arch not in merged:
                merged[arch] = dict(run, rows=list(run["rows"]), seeds=list(run["seeds"]))
                continue
            merged[arch]["rows"] += run["rows"]
            merged[arch]["seeds"] = sorted(set(merged[arch]["seeds"]) | set(run["seeds"]))
            merged[arch]["minutes"] = max(merged[arch]["minutes"], run["minutes"])
    for run in merged.values():
        run["rows"].sort(key=lambda r: (r["seed"], r.get("first_last", 8) is None, r["method"], -r["w"]))
    return merged


def report(store: dict, note: str = "") -> str:
    text = [header("Quantization-aware training (STE / PACT / LSQ) vs PTQ on mnist-10k (2,000 test images)"), ""]
    text.append("Every QAT row: BatchNorm folded before QAT unless the row says 'BN live, folded after' (then "
                "BatchNorm trains with batch statistics, is folded into the learned per-channel grids, and the last "
                "epoch runs folded at 0.1x the rate: flows/qat.py `qat_phases`; the control replays the same phases), "
                "first and last layer at 8 bits (weights and inputs) as in the "
                "LSQ and PACT papers unless the row says 'first/last too', per-channel weights; PTQ = LinearQuant min-max with the same bits and layers, "
                "calibrated on 512 training images, no training. Float, PTQ and QAT come from the same float model of "
                "each seed (mean ± std over seeds). 'convert_ exact': the converted model's outputs equal the "
                "fake-quantized ones bit for bit and its accuracy is the same. 'int engine' / 'ONNX RT': the converted "
                "model run by runtime/ (integer-only) and by ONNX Runtime (4-bit and 2-bit inputs run as emulated "
                "QDQ grids there). Oscillating weights: share of weights whose code flipped back at least once "
                "in the last QAT epoch (quant/oscillation.py; tracked on LSQ weights, PACT's fixed weight grids are not tracked).\n")
    for arch, run in store.items():
        text.append(f"## {arch}\n")
        text.append(f"Budget: float {run['float_epochs']} epochs, QAT {run['qat_epochs']} epochs per configuration "
                    f"at {run.get('lr_factor', 0.1)} x the float learning rate, "
                    f"seeds {run['seeds']}; torch threads {run['threads']}, load average at the end "
                    f"{', '.join(f'{v:.1f}' for v in run['load']) or 'not recorded'} (2-core machine shared with other jobs), "
                    f"{run['minutes']:.0f} min (seeds run as parallel processes). Run header:\n\n> " + run["header"].replace("\n", "\n> ") + "\n")
        text.append(summary(run["rows"]))
        text.append("\nPer seed:\n")
        text.append(per_seed(run["rows"]))
    text.append(NOTES)
    text.append(f"- {note}\n" if note else HISTORY)
    if "resnet20" not in store:
        text.append(RESNET_MISSING)
    return "\n".join(text)


RESNET_MISSING = """- **ResNet-20 is not in this table.** A one-seed run (float 2 epochs, QAT 1 epoch; LSQ W4A4,
  LSQ W2A2 with 8-bit skips, LSQ W2A2 with 2-bit skips) was started and stopped unfinished after
  30 minutes: with the machine's load average above 30 it had not finished its float training.
  Re-run `python benchmarks/qat.py --models resnet20 --seeds 0 --float-epochs 2 --qat-epochs 1
  --configs lsq:4:4 lsq:2:2:8 lsq:2:2:2` on a quieter machine to add it; the precision highway is
  covered by tests/quant/test_qat.py only so far.
"""


HISTORY = """- ResNet-20: two runs per seed from the same float model (10 epochs on 1 thread; the float accuracy
  of both runs is identical for every seed). The first, `--configs lsq:4:4 lsq:3:3 lsq:2:2 pact:4:4`,
  stopped at LSQ W2A2 when a learned weight step crossed zero and the integer engine refused the
  negative multiplier (fixed since: LSQ uses |s|); its W4A4 and W3A3 rows come from the JSON lines it
  printed (their oscillation was not kept), and `--configs lsq:2:2 pact:4:4` ran the rest. Seed 2's
  LSQ W2A2 collapsed (15 %) and seed 0's W3A3 reached 94.6 %: three QAT epochs at 0.1x the float
  learning rate are not enough at 3 bits and below on ResNet-20 (seeds 1 and 2 of W3A3 are within
  0.3 points of float). The cause of the collapse was not investigated.
- Budget: the issue asks for the zoo recipe (15 float epochs); on this shared 2-core machine (load
  average above 30 during the runs) we trained the float models for the epochs stated above and
  fine-tuned each QAT configuration for the stated epochs. 'float %' is the model QAT starts from;
  QAT adds its fine-tuning epochs on top, so part of a positive 'QAT - float' is extra training.
"""

NOTES = """
## Notes

- 'PTQ %' quantizes the same float model with LinearQuant (same bits and layers), no training.
  In the 'first/last too' rows every layer, the network input included, is at the row's bits.
- The integer engine and ONNX export read the learned PACT / LSQ grids as static grids
  (runtime/qvalue.py and export/layers.py accept any activation quantizer with `static = True`);
  weights are stored as symmetric per-channel codes of kind "linear" and biases on the int32 grid
  S_W S_X of the learned scales. Grids of 2 to 8 bits run in the engine; ONNX Runtime runs uint8 /
  int8 grids natively and narrower ones as emulated QDQ.
- ResNet-20: the fake-quantized model carries each residual skip in float, the integer engine as a
  wide int32 (runtime/plan.py `Planner.feeds_add`; tables made before that change carried it on the
  next layer's k-bit grid, which the engine column of those tables shows). Precision-highway rows ('8-bit skips') quantize each identity skip with its own 8-bit LSQ
  quantizer and keep projection shortcuts at 8 bits; '2-bit skips' rows quantize the skips at the
  convolutions' bits. The engine does not run a quantizer on an identity module, so those rows have
  no engine figure.
"""


if __name__ == "__main__":
    main()
