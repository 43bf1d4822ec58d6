"""`nncompress zeroskip`: cycles, memory reads and utilisation of a (pruned) model's layers on the
lecture's zero-skipping outer-product PE array (`hardware/zeroskip.py`)."""
from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from ..validate import UserError
from .common import DataDirOpt, DatasetOpt, DownloadOpt, JsonOpt, ModelArg, app, emit_json, out


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
             json_path: JsonOpt = None) -> None:
    """Per-layer cycles with and without zero-column skipping, weight / activation reads and PE
    utilisation on an R x C outer-product array (Yoo's lecture: 4 cycles -> 3 when 1 of 4 columns is pruned)."""
    import torch

    from ..api import resolve_model
    from ..hardware.zeroskip import check_array, model_zero_skip
    from ..zoo import load_dataset

    shape = check_array(parse_array(array))
    data = load_dataset(dataset, data_dir, download=download)
    net, arch, _ = resolve_model(model, data)
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
                          "layers": [r.as_dict() for r in rows]})
