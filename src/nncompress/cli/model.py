"""Commands on a model as a whole: train, evaluate, inspect (a model or a .nnc file), methods, demo."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Optional

import typer

from .. import api
from ..methods import METHODS
from ..train import evaluate as evaluate_model
from ..zoo import load_dataset
from .common import (DataDirOpt, DatasetOpt, DownloadOpt, JsonOpt, ModelArg, app, check_checkpoint, check_out_path,
                     emit_json, out, print_summary)

@app.command()
def train(model: ModelArg = "lenet300", dataset: DatasetOpt = "digits", data_dir: DataDirOpt = None,
          download: DownloadOpt = False,
          epochs: Annotated[Optional[int], typer.Option(help="epochs (default: the model's recipe)")] = None,
          lr: Annotated[Optional[float], typer.Option(help="learning rate")] = None,
          optimizer: Annotated[Optional[str], typer.Option(help="sgd or adam")] = None,
          schedule: Annotated[Optional[str], typer.Option(help="cosine, step or constant")] = None,
          weight_decay: Annotated[Optional[float], typer.Option(help="L2 weight decay")] = None,
          batch_size: Annotated[int, typer.Option(help="global batch size")] = 64,
          seed: Annotated[int, typer.Option(help="random seed (init, shuffling, dropout)")] = 0,
          out_path: Annotated[Optional[Path], typer.Option("--out", "-o", help="save weights (.safetensors)")] = None,
          checkpoint: Annotated[Optional[Path], typer.Option(help="per-epoch resumable checkpoint file")] = None,
          resume: Annotated[bool, typer.Option(help="continue from --checkpoint if it exists")] = False,
          json_path: JsonOpt = None) -> None:
    """Train a zoo model (or continue a saved one) and report its test accuracy."""
    check_out_path(out_path, "--out")
    check_out_path(checkpoint, "--checkpoint")
    if resume and checkpoint is not None and checkpoint.is_file():
        check_checkpoint(checkpoint)
    _, result = api.train_model(model, dataset, data_dir=data_dir, download=download, batch_size=batch_size,
                                out=str(out_path) if out_path else None, checkpoint=str(checkpoint) if checkpoint else None,
                                resume=resume, epochs=epochs, lr=lr, optimizer=optimizer, schedule=schedule,
                                weight_decay=weight_decay, seed=seed)
    print_summary(result, f"{result['model']} on {result['dataset']} ({result['seconds']:.1f} s)")
    emit_json(json_path, result)


@app.command()
def evaluate(model: ModelArg, dataset: DatasetOpt = "digits", data_dir: DataDirOpt = None,
             download: DownloadOpt = False, json_path: JsonOpt = None) -> None:
    """Evaluate a saved model on a dataset's test split."""
    data = load_dataset(dataset, data_dir, download=download)
    net, arch, _ = api.resolve_model(model, data)
    result = {"model": arch, "dataset": data.name, **evaluate_model(net, data.test_loader())}
    out.print(f"{arch} on {data.name}: accuracy {result['accuracy']:.4f}  loss {result['loss']:.4f}")
    emit_json(json_path, result)


@app.command()
def inspect(model: ModelArg, dataset: DatasetOpt = "digits", data_dir: DataDirOpt = None,
            download: DownloadOpt = False, json_path: JsonOpt = None) -> None:
    """Per-layer table: shapes, parameters, MACs, density (non-zero fraction), bits; or a .nnc file's layers."""
    if model.endswith(".nnc"):
        from .files import inspect_nnc

        return inspect_nnc(Path(model), json_path)
    data = load_dataset(dataset, data_dir, download=download)
    net, arch, _ = api.resolve_model(model, data)
    result = {"model": arch, "dataset": data.name, **api.summarize(net, data)}
    print_summary(result, f"{arch} for {data.name} inputs {data.in_shape}")
    emit_json(json_path, result)



@app.command("methods")
def list_methods() -> None:
    """List the registered methods (YAML names) and their fields."""
    for name, cls in sorted(METHODS.items()):
        fields = ", ".join(f.name for f in dataclasses.fields(cls))
        out.print(f"[bold]{name}[/] ({cls.__name__}): {fields}")


@app.command()
def demo(json_path: JsonOpt = None) -> None:
    """Deep Compression of LeNet-300-100 on the embedded digits data (no network, no download):
    train, prune, share weights, Huffman-code into runs/demo.nnc, decode and evaluate, and write a
    report (runs/demo_report/report.md and a self-contained report.html). Deterministic to the byte
    (torch pinned to one thread)."""
    from ..flows.demo import run_demo
    from .common import deep_compression_table

    result = run_demo("runs")
    out.print(deep_compression_table(result["layers"], f"{result['model']} -> {result['file']}", result["overhead"]))
    out.print(f"exact round trip: {result['exact_roundtrip']}")
    out.print(f"report: {result['report_html']} (and {result['report_md']})")
    out.print(result["summary"])
    emit_json(json_path, result)


