"""`nncompress energy`: the per-layer energy estimate (45 nm table, Horowitz ISSCC 2014) of a zoo
model, a saved model or a .nnc file (its layers at their real stored size)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from ..validate import UserError
from .common import DataDirOpt, DatasetOpt, DownloadOpt, JsonOpt, app, emit_json, out


def energy_table(report, title: str) -> Table:
    """Per-layer rows of an `EnergyReport` plus a total row."""
    from ..report.tables import format_bytes, format_energy

    table = Table(title=title)
    columns = ("layer", "MACs", "MACs run", "BOPs", "bits w/a", "math", "stored", "weights", "compute",
               "weight mem.", "act. mem.", "total")
    for col in columns:
        table.add_column(col, justify="left" if col in ("layer", "math") else "right")
    for r in report.layers:
        table.add_row(r.name, f"{r.macs:,}", f"{r.effective_macs:,.0f}", f"{r.bops:.3g}", f"{r.weight_bits}/{r.act_bits}",
                      r.arithmetic, format_bytes(r.storage_bits / 8), r.weights_in, format_energy(r.compute_pj),
                      format_energy(r.weight_memory_pj), format_energy(r.act_memory_pj), format_energy(r.total_pj))
    t = report.totals
    table.add_row("total", f"{t['macs']:,}", f"{t['effective_macs']:,.0f}", f"{t['bops']:.3g}", "", "",
                  format_bytes(t["storage_bytes"]), "", format_energy(t["compute_pj"]), format_energy(t["weight_memory_pj"]),
                  format_energy(t["act_memory_pj"]), format_energy(t["total_pj"]))
    return table


def _nnc_workloads(path: Path, act_bits: int):
    from ..encode.container import read_nnc
    from ..encode.model import decode_model
    from ..hardware.energy import workloads_from_model
    from ..report.stages import nnc_storage

    nnc = read_nnc(path)
    model = decode_model(nnc)
    storage, bits = nnc_storage(nnc)
    in_shape = tuple(int(d) for d in nnc.model["in_shape"])
    return workloads_from_model(model, in_shape, storage_bits=storage, weight_bits=bits, act_bits=act_bits), \
        nnc.model.get("arch", path.name)


@app.command()
def energy(model: Annotated[str, typer.Argument(help="zoo model, a saved .safetensors model or a .nnc file")],
           dataset: DatasetOpt = "digits", data_dir: DataDirOpt = None, download: DownloadOpt = False,
           sram_kb: Annotated[float, typer.Option("--sram-kb", help="on-chip SRAM in KB (1 KB = 1024 B): weights "
                                                                   "that fit are read from SRAM, else DRAM")] = 256,
           act_bits: Annotated[int, typer.Option(min=1, max=64, help="activation bits of layers without an "
                                                                    "activation quantizer")] = 32,
           skip_zeros: Annotated[bool, typer.Option(help="zero-skipping hardware: pruned weights cost no MAC")] = True,
           table_path: Annotated[Optional[Path], typer.Option("--table", help="your own energy table (YAML / JSON "
                                                                              "with the fields of EnergyTable)")] = None,
           json_path: JsonOpt = None) -> None:
    """Per-layer energy per inference (compute, weight and activation memory) and BOPs from the 45 nm
    energy table (Horowitz, ISSCC 2014); a .nnc file counts each layer at its real stored size."""
    from ..api import resolve_model
    from ..hardware.energy import HOROWITZ_45NM, EnergyConfig, estimate, load_table, workloads_from_model
    from ..zoo import load_dataset

    if not 0 <= sram_kb <= 2**40:
        raise UserError(f"--sram-kb must be a size in [0, 2^40] KB, got {sram_kb}")
    table = load_table(table_path) if table_path is not None else HOROWITZ_45NM
    config = EnergyConfig(sram_bytes=int(sram_kb * 1024), skip_zeros=skip_zeros)
    if model.endswith(".nnc"):
        workloads, arch = _nnc_workloads(Path(model), act_bits)
    else:
        data = load_dataset(dataset, data_dir, download=download)
        net, arch, _ = resolve_model(model, data)
        workloads = workloads_from_model(net, data.in_shape, act_bits=act_bits)
    report = estimate(workloads, table, config)
    source = "45 nm, Horowitz ISSCC 2014" if table is HOROWITZ_45NM else f"table {table_path}"
    out.print(energy_table(report, f"{arch}: energy per inference ({source}, SRAM {sram_kb:g} KB)"))
    emit_json(json_path, {"model": model, "arch": arch, **report.as_dict()})
