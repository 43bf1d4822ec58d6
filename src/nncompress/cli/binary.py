"""`nncompress binarize`: binary and ternary networks (BinaryConnect, BNN, BWN, XNOR-Net, TWN, TTQ,
LQ-Nets) fine-tuned from a trained float model, with accuracy and real stored bytes (issue 14)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from ..validate import UserError
from ..zoo import load_dataset
from .common import DataDirOpt, DatasetOpt, DownloadOpt, JsonOpt, ModelArg, app, check_out_path, emit_json, out


@app.command("binarize")
def binarize(model: ModelArg = "lenet5", dataset: DatasetOpt = "digits", data_dir: DataDirOpt = None,
             download: DownloadOpt = False,
             method: Annotated[str, typer.Option(help="bc, bnn, bwn, xnor, twn, ttq or lqnet")] = "xnor",
             stochastic: Annotated[bool, typer.Option("--stochastic", help="bc: stochastic binarization (p = hard_sigmoid(w))")] = False,
             weight_bits: Annotated[int, typer.Option(min=1, max=8, help="lqnet: bits per weight")] = 2,
             act_bits: Annotated[Optional[int], typer.Option(min=1, max=8, help="lqnet: bits per activation (default: float activations)")] = None,
             epochs: Annotated[Optional[int], typer.Option(min=0, help="fine-tuning epochs (default: the float recipe's)")] = None,
             seed: Annotated[int, typer.Option(help="random seed")] = 0,
             out_path: Annotated[Optional[Path], typer.Option("--out", "-o", help="save the converted (bit-packed) model")] = None,
             json_path: JsonOpt = None) -> None:
    """Binarize / ternarize a model (training the float one first if a zoo name is given), fine-tune,
    and report float vs compressed accuracy and the weight memory saving in real bytes."""
    from ..flows.binary import METHOD_NAMES, binarize as run_binarize, binary_method

    if method not in METHOD_NAMES:
        raise UserError(f"--method {method!r} must be one of: {', '.join(METHOD_NAMES)}")
    if stochastic and method != "bc":
        raise UserError("--stochastic applies to --method bc (BinaryConnect) only")
    if method != "lqnet" and (act_bits is not None or weight_bits != 2):
        raise UserError("--weight-bits / --act-bits apply to --method lqnet only")
    chosen = binary_method(method, stochastic=stochastic, weight_bits=weight_bits, act_bits=act_bits, seed=seed)
    check_out_path(out_path, "--out")
    check_out_path(json_path, "--json")
    data = load_dataset(dataset, data_dir, download=download)
    result = run_binarize(model, chosen, data, epochs=epochs, seed=seed, out=str(out_path) if out_path else None)
    table = Table(title=f"{result['model']} on {result['dataset']}: {method}{' (stochastic)' if stochastic else ''}")
    for col in ("model", "test accuracy", "weight bytes", "file bytes"):
        table.add_column(col, justify="left" if col == "model" else "right")
    table.add_row("float", f"{result['float_accuracy']:.4f}", f"{result['float_weight_bytes']:,}", f"{result['float_file_bytes']:,}")
    table.add_row(method, f"{result['test_accuracy']:.4f}", f"{result['weight_bytes']:,}", f"{result['file_bytes']:,}")
    out.print(table)
    out.print(f"weight memory saving {result['weight_saving']:.1f}x, file {result['file_saving']:.1f}x; "
              f"converted model accuracy {result['converted_accuracy']:.4f}")
    emit_json(json_path, result)
