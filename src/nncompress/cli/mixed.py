"""Mixed precision and FP8 training commands: `mixed-precision` (NIPQ / DiffQ, or the PTQ bit search)
and `fp8-train` (float32 vs FP8 training from the same initialisation). Training shows progress bars
on a terminal; `--json PATH` writes the figures."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from ..validate import UserError, check_choice
from ..zoo import load_dataset
from .common import DataDirOpt, DatasetOpt, DownloadOpt, JsonOpt, ModelArg, app, check_out_path, emit_json, out

MIXED_METHODS = ("nipq", "diffq", "search")


def _int_list(text: str, option: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise UserError(f"{option} {text!r} must be comma-separated integers, e.g. 4,8") from None
    if not values:
        raise UserError(f"{option} {text!r} lists no value, e.g. 4,8")
    return values


def _bits_table(report: dict, title: str) -> Table:
    table = Table(title=title)
    for col in ("layer", "params", "bits"):
        table.add_column(col, justify="left" if col == "layer" else "right")
    for name, bits in report["bits"].items():
        table.add_row(name, f"{report['params'][name]:,}", f"{bits:g}")
    return table


@app.command("mixed-precision")
def mixed_precision(model: ModelArg = "lenet5", dataset: DatasetOpt = "digits", data_dir: DataDirOpt = None,
                    download: DownloadOpt = False,
                    target_bits: Annotated[float, typer.Option(help="average weight bits to reach (weighted by parameter count)")] = 5.0,
                    candidates: Annotated[str, typer.Option(help="nipq: bit-widths each layer ends on, e.g. 4,8")] = "4,8",
                    method: Annotated[str, typer.Option(help="nipq (3 stages), diffq (size penalty, rounded bits) or search (PTQ bit search, no training)")] = "nipq",
                    lam: Annotated[Optional[float], typer.Option("--lambda", help="nipq: weight of the target penalty (default 1.0); diffq: lambda of lambda x average bits (default 0.2)")] = None,
                    epochs: Annotated[str, typer.Option(help="epochs of stage 1,2,3 (diffq: 1 and 3)")] = "3,1,2",
                    bit_lr: Annotated[float, typer.Option(help="learning rate of the bit-widths")] = 0.05,
                    level: Annotated[str, typer.Option(help="search: network, layer or channel")] = "layer",
                    seed: Annotated[int, typer.Option(help="random seed")] = 0,
                    out_path: Annotated[Optional[Path], typer.Option("--out", "-o", help="save the quantized model (nipq / diffq)")] = None,
                    json_path: JsonOpt = None) -> None:
    """Learn per-layer weight bit-widths (NIPQ or DiffQ) on a trained model, or search them after
    training (PTQ); prints per-layer bits, average bits, weight size and accuracy."""
    from ..api import save_model
    from ..flows.mixed_precision import bitsearch_model, mixed_precision_model
    from ..flows.prune import dense_model
    from ..quant.mixed_precision import NIPQ, DiffQ
    from ..quant.ptq import LinearQuant

    check_choice("--method", method, MIXED_METHODS)
    check_out_path(out_path, "--out")
    stage_epochs = _int_list(epochs, "--epochs")
    if len(stage_epochs) != 3:
        raise UserError(f"--epochs {epochs!r} must give three numbers (stages 1,2,3), e.g. 3,1,2")
    data = load_dataset(dataset, data_dir, download=download)
    if method == "search":
        net, arch, _ = dense_model(model, data, seed)
        rows = bitsearch_model(net.eval(), data, target_bits, (level,))
        found = rows[level]
        report = {"model": arch, "dataset": data.name, "method": "search", "level": level, **found,
                  "params": {n: m.weight.numel() for n, m in net.named_modules() if n in found["bits"]}}
    else:
        spec = (NIPQ(target_bits=target_bits, candidates=_int_list(candidates, "--candidates"),
                     penalty=1.0 if lam is None else lam)
                if method == "nipq" else DiffQ(size_weight=0.2 if lam is None else lam))
        net, report = mixed_precision_model(model, data, spec, seed=seed, epochs=stage_epochs, bit_lr=bit_lr)  # type: ignore[arg-type]
        if out_path is not None:
            recipe = LinearQuant(weight_bits=8, act_bits=None, layer_bits={n: int(b) for n, b in report["bits"].items()})
            save_model(net, out_path, recipe=[recipe], arch=report["model"], in_shape=data.in_shape,
                       num_classes=data.num_classes, dataset=data.name, quantized_accuracy=report["accuracy"])
    out.print(_bits_table(report, f"{report['model']}: {method} at <= {target_bits} average bits"))
    line = f"average bits {report['average_bits']:.3f}  accuracy {report['accuracy']:.4f}"
    if "float_accuracy" in report:
        line += f"  float {report['float_accuracy']:.4f}  weights {report['weight_bytes'] / 1024:.1f} KiB ({report['compression']:.1f}x)"
    out.print(line)
    emit_json(json_path, report)


@app.command("fp8-train")
def fp8_train(model: ModelArg = "lenet5", dataset: DatasetOpt = "digits", data_dir: DataDirOpt = None,
              download: DownloadOpt = False,
              epochs: Annotated[Optional[int], typer.Option(min=1, help="training epochs (default: the model's recipe)")] = None,
              weight_scaling: Annotated[str, typer.Option(help="tensor (one amax scale), channel (block-scaled) or none")] = "tensor",
              amax_history: Annotated[int, typer.Option(min=0, help="0: just-in-time activation scaling; N: delayed, over N steps")] = 0,
              seed: Annotated[int, typer.Option(help="random seed")] = 0,
              json_path: JsonOpt = None) -> None:
    """Train a zoo model in float32 and in FP8 (E4M3 weights / activations forward, E5M2 gradients
    backward, amax scaling) from the same initialisation, seed and schedule; print both accuracies."""
    from ..flows.mixed_precision import fp8_train_model
    from ..quant.fp8_training import FP8Training

    method = FP8Training(weight_scaling=weight_scaling, amax_history=amax_history)
    data = load_dataset(dataset, data_dir, download=download)
    report = fp8_train_model(model, data, method, seed=seed, epochs=epochs)
    table = Table(title=f"{report['model']} on {report['dataset']}: float32 vs FP8 ({report['epochs']} epochs, seed {seed})")
    for col in ("training", "accuracy", "seconds"):
        table.add_column(col, justify="left" if col == "training" else "right")
    for name in ("float32", "fp8"):
        table.add_row(name, f"{report[name]['accuracy']:.4f}", f"{report[name]['seconds']:.1f}")
    out.print(table)
    out.print(f"FP8 - float32: {100 * report['difference']:+.2f} points")
    emit_json(json_path, report)
