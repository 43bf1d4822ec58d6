"""`nncompress zeroskip`: cycles, memory reads and utilisation of a (pruned) model's layers on the
lecture's zero-skipping outer-product PE array (`hardware/zeroskip.py`); `nncompress sparse-kernels`:
a pruned model on per-layer measured sparse / dense CPU kernels, timed end to end."""
from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.table import Table

from ..validate import UserError, check_fraction
from .common import (DataDirOpt, DatasetOpt, DownloadOpt, ExcludeOpt, JsonOpt, ModelArg, app, console, emit_json,
                     out)


def parse_array(text: str) -> tuple[int, int]:
    """'RxC' (e.g. '4x4') -> (R, C)."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise UserError(f"--array {text!r} must be ROWSxCOLUMNS, e.g. 4x4 or 16x16")
    return int(parts[0]), int(parts[1])


@app.command("zeroskip")
def zeroskip(model: ModelArg, dataset: DatasetOpt = "digits", data_dir: DataDirOpt = None, download: DownloadOpt = False,
             array: Annotated[str, typer.Option("--array", help="PE array ROWSxCOLUMNS")] = "4x4",
             batch: Annotated[int, typer.Option("--batch", min=1, max=4096, help="inputs per run (N grows with it)")] = 1,
             column_sparsity: Annotated[Optional[float], typer.Option(help="first prune this fraction of every layer's im2col columns (lowest sum |w|, ColumnPrune, no fine-tuning: cycles depend only on which columns are zero), in [0, 1)")] = None,
             exclude: ExcludeOpt = None,
             json_path: JsonOpt = None) -> None:
    """Per-layer cycles with and without zero-column skipping, weight / activation reads and PE
    utilisation on an R x C outer-product array (Yoo's lecture: 4 cycles -> 3 when 1 of 4 columns is pruned).
    Give a column-pruned file (nncompress prune MODEL --structure column -o FILE) or --column-sparsity."""
    import torch

    from ..api import resolve_model
    from ..hardware.zeroskip import check_array, model_zero_skip
    from ..zoo import load_dataset

    shape = check_array(parse_array(array))
    if exclude and column_sparsity is None:
        raise UserError("--exclude names layers to leave out of --column-sparsity; give --column-sparsity too")
    if column_sparsity is not None:
        check_fraction("--column-sparsity", column_sparsity)
    data = load_dataset(dataset, data_dir, download=download)
    net, arch, trained = resolve_model(model, data)
    if column_sparsity is not None:
        prune_columns_(net, column_sparsity, exclude or ())
    elif not trained:
        console.print(f"note: {arch} is a fresh zoo model without zero columns, so every layer runs dense; give a "
                      f"column-pruned file (nncompress prune {arch} --structure column -o FILE) or --column-sparsity",
                      highlight=False)
    rows = model_zero_skip(net, torch.zeros(batch, *data.in_shape), array=shape)
    table = Table(title=f"{arch}: zero-skipping on a {shape[0]}x{shape[1]} PE array, batch {batch}")
    for col in ("layer", "W (M x K)", "N", "zero cols", "dense cycles", "cycles", "speed-up", "W reads", "I reads",
                "utilisation"):
        table.add_column(col, justify="left" if col == "layer" else "right")
    for r in rows:
        table.add_row(r.name, "" if r.name == "total" else f"{r.rows}x{r.depth}", "" if r.name == "total" else str(r.n),
                      f"{100 * r.zero_columns:.1f}%", f"{r.dense_cycles:,}", f"{r.cycles:,}", f"{r.speedup:.2f}x",
                      f"{r.weight_reads:,}", f"{r.activation_reads:,}", f"{100 * r.utilisation:.1f}%")
    out.print(table)
    emit_json(json_path, {"model": model, "arch": arch, "array": list(shape), "batch": batch,
                          "column_sparsity": column_sparsity, "exclude": list(exclude or ()),
                          "layers": [r.as_dict() for r in rows]})


def prune_columns_(net, sparsity: float, exclude) -> None:
    """Zero the `sparsity` fraction of each targeted layer's im2col columns with the lowest sum |w|
    (the lecture's column pruning, `prune.structured.ColumnPrune`)."""
    from ..api import apply_
    from ..config import Select
    from ..prune.structured import ColumnPrune

    apply_(net, ColumnPrune(sparsity=sparsity, targets=Select(exclude=tuple(exclude))))


@app.command("sparse-kernels")
def sparse_kernels(model: ModelArg, dataset: DatasetOpt = "digits", data_dir: DataDirOpt = None,
                   download: DownloadOpt = False,
                   batch: Annotated[int, typer.Option("--batch", min=1, max=4096, help="test images per call")] = 64,
                   threads: Annotated[int, typer.Option(min=1, max=256, help="torch intra-op threads")] = 2,
                   rounds: Annotated[int, typer.Option(min=1, max=1000, help="interleaved rounds, whole model")] = 15,
                   max_density: Annotated[float, typer.Option(help="layers denser than this stay dense unmeasured, in (0, 1]")] = 0.5,
                   min_speedup: Annotated[float, typer.Option(help="a layer runs sparse when measured this many times faster")] = 1.1,
                   json_path: JsonOpt = None) -> None:
    """Run a pruned model's layers on sparse (torch CSR, im2col + CSR for convs) or dense kernels, chosen
    per layer by measuring, and time the whole model against its dense twin (interleaved medians)."""
    from ..api import resolve_model
    from ..flows.sparse_exec import sparse_execution
    from ..zoo import load_dataset

    data = load_dataset(dataset, data_dir, download=download)
    net, arch, trained = resolve_model(model, data)
    if not trained:
        console.print(f"note: {arch} is a fresh dense zoo model: no layer is sparse enough to measure; give a "
                      f"pruned file (nncompress prune {arch} -o FILE)", highlight=False)
    x = data.test_x[:batch]
    _, result = sparse_execution(net, x, threads=threads, rounds=rounds, max_density=max_density,
                                 min_speedup=min_speedup)
    out.print(kernel_table(result, f"{arch}: kernel per layer, batch {x.shape[0]}, {threads} threads"))
    out.print(f"end to end: dense {result['dense_ms']:.3f} ms, selected {result['selected_ms']:.3f} ms, speed-up "
              f"{result['speedup']:.2f}x (median of {rounds} interleaved rounds, min {result['speedup_min']:.2f}, "
              f"max {result['speedup_max']:.2f}); {result['sparse_layers']} of {len(result['layers'])} layers sparse")
    if not result["sparse_layers"]:
        out.print("no layer runs sparse, so both are the same dense model: the ratio only shows the timing noise")
    emit_json(json_path, {"model": model, "arch": arch, **result})


def kernel_table(result: dict, title: str) -> Table:
    table = Table(title=title)
    for col in ("layer", "type", "weight", "sparsity", "dense ms", "sparse ms", "dense / sparse", "kernel", "why"):
        table.add_column(col, justify="left" if col in ("layer", "type", "kernel", "why") else "right")
    for r in result["layers"]:
        table.add_row(r["name"], r["kind"], "x".join(map(str, r["shape"])), f"{1 - r['density']:.1%}",
                      "" if r["dense_ms"] is None else f"{r['dense_ms']:.3f}",
                      "" if r["sparse_ms"] is None else f"{r['sparse_ms']:.3f}",
                      "" if r["speedup"] is None else f"{r['speedup']:.2f}x", r["choice"], r["reason"])
    return table
