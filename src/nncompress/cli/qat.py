"""`nncompress qat`: quantization-aware training (STE, PACT or LSQ), converted and measured."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from ..validate import UserError, check_choice, check_int_range
from ..zoo import load_dataset
from .common import DataDirOpt, DatasetOpt, DownloadOpt, JsonOpt, ModelArg, app, check_out_path, emit_json, out


@app.command("qat")
def qat(model: ModelArg = "lenet5", dataset: DatasetOpt = "digits", data_dir: DataDirOpt = None,
        download: DownloadOpt = False,
        method: Annotated[str, typer.Option(help="ste (fixed grids), pact (learned clip) or lsq (learned steps)")] = "lsq",
        weight_bits: Annotated[int, typer.Option(help="weight bits (2..8), symmetric per channel")] = 4,
        act_bits: Annotated[int, typer.Option(help="activation bits (2..8); 0 = weights only")] = 4,
        first_last_bits: Annotated[int, typer.Option(help="bits of the first and last layer (0 = same as the rest)")] = 8,
        init: Annotated[Optional[str], typer.Option(help="LSQ only: how the steps start: lsq (the paper's 2<|v|>/sqrt(Q_P)) or mse (least quantization error)")] = None,
        epochs: Annotated[Optional[int], typer.Option(min=1, help="QAT fine-tuning epochs (default: a third of the float recipe)")] = None,
        lr_factor: Annotated[float, typer.Option(help="fine-tuning LR / the float recipe's LR")] = 0.1,
        freeze_threshold: Annotated[Optional[float], typer.Option(help="freeze LSQ weights whose oscillation frequency exceeds this (e.g. 0.02)")] = None,
        dampen: Annotated[float, typer.Option(help="weight of the oscillation dampening loss (0 = off)")] = 0.0,
        distill_alpha: Annotated[float, typer.Option(min=0.0, max=1.0, help="weight of knowledge distillation from the float model during QAT (0 = off; flows/distill.py)")] = 0.0,
        distill_temperature: Annotated[float, typer.Option(min=0.01, help="distillation softmax temperature")] = 4.0,
        batchnorm: Annotated[str, typer.Option(help="fold: fold BatchNorm before QAT; train: keep it live during QAT (LSQ's setup), fold it into the learned per-channel grids, then (with 2+ epochs) the last epoch folded at 0.1x the rate; auto: train for 2-bit LSQ with per-channel weights, else fold")] = "auto",
        seed: Annotated[int, typer.Option(help="random seed")] = 0,
        checkpoint: Annotated[Optional[Path], typer.Option(help="write a resumable checkpoint after every QAT epoch")] = None,
        resume: Annotated[bool, typer.Option("--resume", help="continue from --checkpoint")] = False,
        out_path: Annotated[Optional[Path], typer.Option("--out", "-o", help="save the converted model")] = None,
        json_path: JsonOpt = None) -> None:
    """Fold BatchNorm (before QAT, or after with --batchnorm train), attach fake quantizers, fine-tune, convert_; report float vs PTQ vs QAT accuracy,
    the integer engine's and ONNX Runtime's accuracy, and weight oscillation per epoch."""
    from ..flows.distill import DistillConfig
    from ..flows.ptq import quantize_copy
    from ..flows.prune import calibration_batches, dense_model
    from ..flows.qat import BATCHNORM_MODES, make_method, ptq_twin, qat_model
    from ..train import evaluate

    check_choice("--batchnorm", batchnorm, BATCHNORM_MODES)
    check_int_range("--weight-bits", weight_bits, 2, 8)
    if act_bits != 0:
        check_int_range("--act-bits", act_bits, 2, 8)
    if first_last_bits != 0:
        check_int_range("--first-last-bits", first_last_bits, 2, 8)
    if resume and checkpoint is None:
        raise UserError("--resume needs --checkpoint PATH")
    check_out_path(out_path, "--out")
    data = load_dataset(dataset, data_dir, download=download)
    float_model, arch, _ = dense_model(model, data, seed)
    quant = make_method(method, weight_bits, act_bits or None, model=float_model,
                        first_last_bits=first_last_bits or None, init=init)
    ptq_accuracy = evaluate(quantize_copy(float_model.eval(), ptq_twin(quant), calibration_batches(data)),
                            data.test_loader())["accuracy"]
    _, _, report = qat_model(arch, data, quant, epochs=epochs, lr_factor=lr_factor, seed=seed, float_model=float_model,
                             freeze_threshold=freeze_threshold, dampen=dampen,
                             distill=DistillConfig(distill_alpha, distill_temperature) if distill_alpha else None,
                             checkpoint=str(checkpoint) if checkpoint else None, resume=resume,
                             out=str(out_path) if out_path else None, batchnorm=batchnorm)
    report["ptq_accuracy"] = ptq_accuracy
    out.print(result_table(report, f"{arch} {method.upper()} W{weight_bits}A{act_bits or 'float'} on {data.name}"))
    out.print(oscillation_table(report["oscillation"]))
    out.print(batchnorm_note(report, batchnorm))
    for key in ("engine_error", "onnx_error"):
        if key in report:
            out.print(f"{key.replace('_', ' ')}: {report[key]}")
    emit_json(json_path, report)


def batchnorm_note(report: dict, requested: str) -> str:
    """How BatchNorm was handled, and what a user should know about it."""
    if report["batchnorm"] == "fold":
        if requested == "train":
            return "BatchNorm: the model has none to keep live, so it ran as --batchnorm fold"
        return f"BatchNorm: folded before QAT ({len(report['folded_batchnorm'])} layers)"
    fold = report["batchnorm_fold"]
    note = (f"BatchNorm: trained live, then folded into {len(fold['layers'])} layers' learned grids; "
            f"phases: {', '.join(report['phases'])}")
    if fold["clamped_codes"]:
        note += (f"\nwarning: {fold['clamped_codes']} weight codes at -Q_N met a negative BatchNorm gamma and were "
                 "clamped to Q_P by the fold (use --batchnorm fold to avoid it)")
    return note


def result_table(report: dict, title: str) -> Table:
    table = Table(title=title)
    table.add_column("model")
    table.add_column("test accuracy", justify="right")
    rows = [("float", "float_accuracy"), ("PTQ (same bits)", "ptq_accuracy"), ("QAT before fine-tuning", "initial_accuracy"),
            ("QAT, BatchNorm live (before the fold)", "live_accuracy"), ("QAT, just after folding BatchNorm", "folded_accuracy"),
            ("QAT", "qat_accuracy"),
            ("converted (convert_)", "converted_accuracy"),
            ("integer engine", "engine_accuracy"), ("ONNX Runtime", "onnx_accuracy")]
    for label, key in rows:
        if report.get(key) is not None:
            table.add_row(label, f"{report[key]:.4f}")
    table.caption = f"convert_ reproduces the fake-quantized outputs exactly: {report['converted_exact']}"
    return table


def oscillation_table(history: list[dict]) -> Table:
    table = Table(title="weight oscillation (codes flipping back, per epoch)")
    for col in ("epoch", "flips", "oscillating weights", "frozen"):
        table.add_column(col, justify="right")
    for row in history:
        table.add_row(str(row["epoch"]), f"{row['flips']:,}", f"{row['oscillating_fraction']:.2%}",
                      f"{row['frozen_fraction']:.2%}")
    return table
