"""Commands on .nnc files: decode (and the .nnc half of `inspect`)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from .. import api
from ..train import evaluate as evaluate_model
from ..validate import UserError
from ..zoo import load_dataset
from .common import (DataDirOpt, DatasetOpt, DownloadOpt, JsonOpt, app, check_out_path, console,
                     deep_compression_table, emit_json, out)

@app.command()
def decode(path: Annotated[Path, typer.Argument(help="a .nnc file")], dataset: DatasetOpt = "digits",
           data_dir: DataDirOpt = None, download: DownloadOpt = False,
           out_path: Annotated[Optional[Path], typer.Option("--out", "-o", help="save as .safetensors")] = None,
           json_path: JsonOpt = None) -> None:
    """Rebuild a working model from a .nnc file and evaluate it."""
    from ..encode.container import read_nnc
    from ..encode.model import decode_model

    check_out_path(out_path, "--out")
    nnc = read_nnc(path)
    net = decode_model(nnc)
    data = load_dataset(dataset, data_dir, download=download)
    result = {"file": str(path), "file_bytes": path.stat().st_size, **nnc.model,
              **evaluate_model(net, data.test_loader())}
    out.print(f"{nnc.model['arch']} from {path} ({result['file_bytes']:,} B): accuracy on {data.name} "
              f"{result['accuracy']:.4f}")
    if out_path is not None:
        api.save_model(net, out_path, arch=nnc.model["arch"], in_shape=tuple(nnc.model["in_shape"]),
                       num_classes=int(nnc.model["num_classes"]))
        console.print(f"wrote {out_path}")
    emit_json(json_path, result)



def inspect_nnc(path: Path, json_path: Optional[Path]) -> None:
    from ..encode.container import read_nnc
    from ..encode.model import decoded_state
    from ..flows.deep_compression import layer_row, overhead_row

    nnc = read_nnc(path)
    decoded_state(nnc)  # every chain decodes (a bad file is refused here, not summarised)
    rows, overhead = [_layer_row(layer_row, layer, path) for layer in nnc.layers], overhead_row(nnc)
    version = ".".join(map(str, nnc.version))
    out.print(deep_compression_table(rows, f"{path} ({path.stat().st_size:,} B, .nnc {version}): {nnc.model}", overhead))
    emit_json(json_path, {"file": str(path), "file_bytes": path.stat().st_size, "version": version, "model": nnc.model,
                           "layers": rows, "overhead": overhead,
                           "tensors": {k: list(v.shape) for k, v in nnc.tensors.items()}})


def _layer_row(layer_row: Any, layer: Any, path: Path) -> dict:
    """One table row; a layer the statistics cannot describe (zero-size, empty codebook, a kind
    without them) is a UserError naming it, not a traceback."""
    try:
        return layer_row(layer)
    except (ZeroDivisionError, ValueError, KeyError, IndexError, TypeError, RuntimeError) as err:
        raise UserError(f"{path}: layer {layer.name!r} (shape {list(layer.shape)}) cannot be summarised: "
                        f"{type(err).__name__}: {err}") from None


