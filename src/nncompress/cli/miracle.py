"""`nncompress miracle MODEL --target-ratio R` (issue 16): MIRACLE, minimal random code learning
(Havasi et al., ICLR 2019; `flows/minimal_random_code.py`): the trained model's weights become
Gaussian posteriors trained toward the byte budget, each block of weights is stored as the index of
a shared random sample, and the file is decoded and measured."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from ..validate import UserError
from ..zoo import load_dataset
from .common import DataDirOpt, DatasetOpt, DownloadOpt, JsonOpt, ModelArg, app, check_out_path, emit_json, out


@app.command("miracle")
def miracle(model: ModelArg = "lenet5", dataset: DatasetOpt = "digits", data_dir: DataDirOpt = None,
            download: DownloadOpt = False,
            target_ratio: Annotated[Optional[float], typer.Option(help="compression to reach: fp32 bytes / file bytes")] = None,
            target_bytes: Annotated[Optional[int], typer.Option(help="as --target-ratio, for a file of at most this many bytes")] = None,
            variational_epochs: Annotated[int, typer.Option(min=0, help="epochs with one penalty toward the total goal")] = 20,
            balance_epochs: Annotated[int, typer.Option(min=0, help="epochs with one penalty per block")] = 10,
            rounds: Annotated[int, typer.Option(min=1, max=1000, help="coding rounds (one retraining epoch between rounds)")] = 8,
            block_bits: Annotated[int, typer.Option(min=1, max=16, help="bits per block: 2^C candidates drawn for each")] = 12,
            distill_alpha: Annotated[float, typer.Option(min=0.0, max=1.0, help="weight of knowledge distillation from the dense model in every epoch (0 = off; flows/distill.py)")] = 0.0,
            distill_temperature: Annotated[float, typer.Option(min=0.01, help="distillation softmax temperature")] = 4.0,
            local_reparameterization: Annotated[bool, typer.Option("--local-reparameterization/--weight-sampling", help="sample each Linear / Conv output (Kingma et al. 2015; the default) or, with --weight-sampling, the weights (the paper's)")] = True,
            seed: Annotated[int, typer.Option(help="random seed")] = 0,
            out_path: Annotated[Path, typer.Option("--out", "-o", help="the .nnc file to write")] = Path("miracle.nnc"),
            json_path: JsonOpt = None) -> None:
    """Train the model (a zoo name: its recipe's pretraining first), then MIRACLE-code it within the
    budget; prints the blocks per layer, the file size and the accuracy of the model decoded from the
    file."""
    import math

    from ..analysis.metrics import count_params
    from ..api import resolve_model
    from ..flows.distill import DistillConfig
    from ..flows.minimal_random_code import MiracleConfig, compress_miracle, planned_blocks
    from ..flows.prune import dense_model
    from ..train import evaluate

    if (target_ratio is None) == (target_bytes is None):
        raise UserError("give exactly one of --target-ratio and --target-bytes")
    if target_ratio is not None and not (math.isfinite(target_ratio) and target_ratio > 1):
        raise UserError(f"--target-ratio {target_ratio} must be a finite number above 1")
    if target_bytes is not None and target_bytes < 1:
        raise UserError(f"--target-bytes {target_bytes} must be a positive number of bytes")
    check_out_path(out_path, "--out")
    data = load_dataset(dataset, data_dir, download=download)
    config = MiracleConfig(block_bits=block_bits, variational_epochs=variational_epochs, balance_epochs=balance_epochs,
                           rounds=rounds, distill=DistillConfig(distill_alpha, distill_temperature),
                           local_reparameterization=local_reparameterization)
    meta = {"dataset": data.name, "seed": seed,
            **({"distill": {"alpha": distill_alpha, "temperature": distill_temperature}} if distill_alpha else {})}
    untrained, arch, trained = resolve_model(model, data, seed=seed)  # the structure: check the budget first
    budget = target_bytes if target_bytes is not None else int(4 * count_params(untrained) / target_ratio)
    desc = {"arch": arch, "in_shape": list(data.in_shape), "num_classes": data.num_classes}
    planned_blocks(untrained, desc, config, budget, meta)
    net, arch, _ = dense_model(model, data, seed)  # the zoo recipe's training (a saved model: as it is)
    dense_accuracy = evaluate(net, data.test_loader())["accuracy"]
    _, result = compress_miracle(net, arch, data, config, budget_bytes=budget, seed=seed, out=out_path, meta=meta)
    table = Table(title=f"{arch}: MIRACLE blocks of {block_bits} bits for a budget of {budget:,} B")
    for col in ("layer", "blocks", "index bytes"):
        table.add_column(col, justify="left" if col == "layer" else "right")
    for name, blocks in result["blocks"].items():
        table.add_row(name, f"{blocks:,}", f"{blocks * block_bits / 8:,.0f}")
    out.print(table)
    start = "input" if trained else "dense"
    out.print(f"{start} accuracy {dense_accuracy:.4f}  compressed accuracy {result['accuracy']:.4f} (decoded from "
              f"{out_path})  {result['file_bytes']:,} B = {result['compression']:.1f}x  exact round trip: "
              f"{result['exact_roundtrip']}")
    if result["file_bytes"] < 0.9 * budget:
        out.print(f"note: the file uses {result['file_bytes']:,} of the {budget:,} B budget: MIRACLE codes at most one "
                  "block per weight, so a budget this large cannot be spent")
    emit_json(json_path, {"model": arch, "dataset": data.name, "dense_accuracy": dense_accuracy,
                          "input_trained": bool(trained), **result})  # one key as in every command; input_trained: a saved model
