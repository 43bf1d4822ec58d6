"""Commands that run a model elsewhere: export (ONNX) and bench (latency across backends)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from .. import api
from ..zoo import load_dataset
from .common import (DataDirOpt, DatasetOpt, DownloadOpt, JsonOpt, ModelArg, QuantizeOpt, WeightRangeOpt, app,
                     emit_json, out, torch_threads)

def _export_inputs(model: str, dataset: str, data_dir: Optional[str], download: bool, calib_images: int,
                   quantize: str, seed: int):
    """(float model, converted int8 model, data, arch, calibration batches) for export / bench."""
    from ..export.bench import QUANTIZE_CHOICES, quantize_for_export
    from ..validate import check_choice

    check_choice("--quantize", quantize, QUANTIZE_CHOICES)
    data = load_dataset(dataset, data_dir, download=download)
    net, arch, trained = api.resolve_model(model, data, seed=seed)
    if not trained:
        out.print(f"note: {model!r} is a fresh zoo model with random weights: pass a trained .safetensors / .nnc file "
                  "(e.g. from `nncompress train`) to export or time a useful model")
    calib, seen = [], 0
    for x, _ in data.train_loader(min(calib_images, 128), seed=seed):
        calib.append(x)
        seen += len(x)
        if seen >= calib_images:
            break
    return net.eval(), quantize_for_export(net, quantize, calib), data, arch, calib



@app.command()
def export(model: ModelArg, onnx_path: Annotated[Path, typer.Option("--onnx", help="the .onnx file to write")],
           format: Annotated[str, typer.Option("--format", help="qdq or qoperator")] = "qdq",
           weight_range: WeightRangeOpt = "auto", quantize: QuantizeOpt = "static",
           dataset: DatasetOpt = "digits", data_dir: DataDirOpt = None, download: DownloadOpt = False,
           calib_images: Annotated[int, typer.Option(min=1, help="training images for calibration")] = 256,
           check_images: Annotated[int, typer.Option(min=0, help="test images to compare ONNX Runtime with PyTorch")] = 500,
           seed: Annotated[int, typer.Option(help="random seed (zoo models)")] = 0,
           threads: Annotated[Optional[int], typer.Option(min=1, help="threads for PyTorch and the ONNX Runtime check "
                                                          "(default: torch's)")] = None,
           json_path: JsonOpt = None) -> None:
    """Export a (quantized) model to ONNX (QDQ or QOperator) and check it in ONNX Runtime."""
    import torch

    from ..export.onnx import export_onnx
    from ..export.graph import ort_session
    from ..export.bench import compare_on_data

    if threads is not None:
        torch.set_num_threads(threads)

    _, net, data, arch, calib = _export_inputs(model, dataset, data_dir, download, calib_images, quantize, seed)
    example = calib[0][:1]
    result = export_onnx(net, example, onnx_path, format=format, weight_range=weight_range, calibration=calib)
    summary = {"model": arch, "dataset": data.name, **result.summary(), "file_bytes": onnx_path.stat().st_size}
    if check_images:
        batches, seen = [], 0
        for x, y in data.test_loader(min(check_images, 256)):
            batches.append((x[: check_images - seen], y[: check_images - seen]))
            seen += len(batches[-1][1])
            if seen >= check_images:
                break
        summary["check"] = compare_on_data(net, ort_session(str(onnx_path), threads=torch_threads()), batches)
    table = Table(title=f"{arch} -> {onnx_path} ({format}, {summary['file_bytes']:,} B)")
    for col in ("layer", "weight", "input"):
        table.add_column(col)
    for name, info in result.layers.items():
        table.add_row(name, info["weight"], info["input"])
    out.print(table)
    for note in result.notes:
        out.print(f"note: {note}")
    if "check" in summary:
        c = summary["check"]
        out.print(f"ONNX Runtime vs PyTorch on {c['images']} test images: accuracy {c['ort_accuracy']:.4f} vs "
                  f"{c['torch_accuracy']:.4f}, top-1 agreement {c['top1_agreement']:.4f}, max |diff| "
                  f"{c['max_abs_diff']:.3g} ({100 * c['max_rel_diff']:.3f}% of the largest output)")
    emit_json(json_path, summary)



@app.command()
def bench(model: ModelArg,
          batch: Annotated[int, typer.Option(min=1, help="batch size")] = 64,
          threads: Annotated[int, typer.Option(min=1, help="threads (torch and ONNX Runtime intra-op)")] = 2,
          repeats: Annotated[int, typer.Option(min=1, help="interleaved timing rounds (medians reported)")] = 15,
          weight_range: WeightRangeOpt = "auto", quantize: QuantizeOpt = "static",
          dataset: DatasetOpt = "digits", data_dir: DataDirOpt = None, download: DownloadOpt = False,
          calib_images: Annotated[int, typer.Option(min=1, help="training images for calibration")] = 256,
          seed: Annotated[int, typer.Option(help="random seed (zoo models)")] = 0,
          json_path: JsonOpt = None) -> None:
    """Latency / throughput: float32 PyTorch, int8 PyTorch (ours: to_int8_; torch's quantize_dynamic for
    Linear models), float32 ONNX Runtime and the int8 ONNX export, timed interleaved in one process."""
    import torch

    from ..export.bench import bench_backends, float_baseline, torch_dynamic_int8
    from ..quant.fold import fold_batchnorm_

    loaded, net, data, arch, calib = _export_inputs(model, dataset, data_dir, download, calib_images, quantize, seed)
    float_net = float_baseline(loaded)
    fold_batchnorm_(float_net)
    x = torch.randn(batch, *data.in_shape, generator=torch.Generator().manual_seed(seed))
    result = bench_backends(float_net, net, x, threads=threads, repeats=repeats, calib=calib,
                            torch_int8=torch_dynamic_int8(float_net), weight_range=weight_range)
    table = Table(title=f"{arch}, batch {batch}, {threads} threads, median of {repeats} interleaved rounds")
    for col in ("backend", "ms / batch", "items / s", "vs float32 torch", "vs float32 ORT"):
        table.add_column(col, justify="left" if col == "backend" else "right")
    for row in result["rows"]:
        table.add_row(row["backend"], f"{row['ms']:.3f}", f"{row['items_per_s']:,.0f}", f"{row['vs_float32_torch']:.2f}x",
                      f"{row['vs_float32_ort']:.2f}x")
    out.print(table)
    for note in result["notes"]:
        out.print(f"note: {note}")
    emit_json(json_path, {"model": arch, "dataset": data.name, **result})


