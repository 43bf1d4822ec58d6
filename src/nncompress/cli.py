"""The `nncompress` command line: a thin layer over `nncompress.api`.

Every command that produces figures prints a table and, with `--json PATH`, writes them as JSON.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from . import api
from .fileio import write_json
from .train import evaluate as evaluate_model
from .train import is_main_process
from .zoo import DATASETS, MODELS, load_dataset

app = typer.Typer(help="Prune and quantize PyTorch models, and measure what it buys.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
console = Console(stderr=True)
out = Console(width=None if sys.stdout.isatty() else 120)  # wide tables in logs and pipes too

ModelArg = Annotated[str, typer.Argument(help=f"zoo model ({', '.join(MODELS)}) or a saved .safetensors file")]
DatasetOpt = Annotated[str, typer.Option("--dataset", "-d", help=f"one of: {', '.join(DATASETS)}")]
DataDirOpt = Annotated[Optional[str], typer.Option("--data-dir", help="folder holding (or receiving) the dataset files")]
DownloadOpt = Annotated[bool, typer.Option("--download", help="download missing dataset files (needs a network)")]
JsonOpt = Annotated[Optional[Path], typer.Option("--json", help="also write the figures as JSON to this path")]


def _emit_json(path: Optional[Path], result: dict) -> None:
    if path is not None and is_main_process():
        write_json(path, result)
        console.print(f"wrote {path}")


def _layer_table(rows: list[dict], title: str) -> Table:
    table = Table(title=title)
    for col in ("layer", "type", "shape", "params", "MACs", "density", "bits"):
        table.add_column(col, justify="left" if col in ("layer", "type", "shape") else "right")
    for row in rows:
        table.add_row(row["name"], row["kind"], "x".join(map(str, row["shape"])), f"{row['params']:,}",
                      f"{row['macs']:,}", f"{row['density']:.3f}", str(row["bits"]))
    return table


def _print_summary(result: dict, title: str) -> None:
    if not is_main_process():
        return
    out.print(_layer_table(result["layers"], title))
    out.print(f"params {result['params']:,}  non-zero {result['nonzero']:,}  MACs {result['macs']:,}  "
              f"test accuracy {result['test_accuracy']:.4f}")


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
    _, result = api.train_model(model, dataset, data_dir=data_dir, download=download, batch_size=batch_size,
                                out=str(out_path) if out_path else None, checkpoint=str(checkpoint) if checkpoint else None,
                                resume=resume, epochs=epochs, lr=lr, optimizer=optimizer, schedule=schedule,
                                weight_decay=weight_decay, seed=seed)
    _print_summary(result, f"{result['model']} on {result['dataset']} ({result['seconds']:.1f} s)")
    _emit_json(json_path, result)


@app.command()
def evaluate(model: ModelArg, dataset: DatasetOpt = "digits", data_dir: DataDirOpt = None,
             download: DownloadOpt = False, json_path: JsonOpt = None) -> None:
    """Evaluate a saved model on a dataset's test split."""
    data = load_dataset(dataset, data_dir, download=download)
    net, arch, _ = api.resolve_model(model, data)
    result = {"model": arch, "dataset": data.name, **evaluate_model(net, data.test_loader())}
    out.print(f"{arch} on {data.name}: accuracy {result['accuracy']:.4f}  loss {result['loss']:.4f}")
    _emit_json(json_path, result)


@app.command()
def inspect(model: ModelArg, dataset: DatasetOpt = "digits", data_dir: DataDirOpt = None,
            download: DownloadOpt = False, json_path: JsonOpt = None) -> None:
    """Per-layer table: shapes, parameters, MACs, density (non-zero fraction), bits; or a .nnc file's layers."""
    if model.endswith(".nnc"):
        return _inspect_nnc(Path(model), json_path)
    data = load_dataset(dataset, data_dir, download=download)
    net, arch, _ = api.resolve_model(model, data)
    result = {"model": arch, "dataset": data.name, **api.summarize(net, data)}
    _print_summary(result, f"{arch} for {data.name} inputs {data.in_shape}")
    _emit_json(json_path, result)


def _parse_layer_values(text: Optional[str]) -> dict[str, float]:
    """'fc1=0.9,fc3=0.75' -> {'fc1': 0.9, 'fc3': 0.75}."""
    if not text:
        return {}
    pairs = {}
    for item in text.split(","):
        name, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--layer-sparsity item {item!r} must look like NAME=FRACTION, e.g. fc3=0.75")
        pairs[name.strip()] = float(value)
    return pairs


@app.command()
def prune(model: ModelArg = "lenet300", dataset: DatasetOpt = "digits", data_dir: DataDirOpt = None,
          download: DownloadOpt = False,
          method: Annotated[str, typer.Option(help="magnitude, random or threshold")] = "magnitude",
          sparsity: Annotated[float, typer.Option(help="fraction of targeted weights removed, in [0, 1)")] = 0.9,
          scope: Annotated[str, typer.Option(help="layer (each layer) or global (one threshold)")] = "layer",
          layer_sparsity: Annotated[Optional[str], typer.Option(help="per-layer overrides: fc1=0.92,fc3=0.75")] = None,
          quality: Annotated[float, typer.Option(help="threshold method: keep |w| > quality * std(w)")] = 1.0,
          exclude: Annotated[Optional[list[str]], typer.Option(help="layer name to leave dense (repeatable)")] = None,
          schedule: Annotated[str, typer.Option(help="oneshot, iterative or agp")] = "iterative",
          rounds: Annotated[int, typer.Option(help="iterative: prune-retrain cycles")] = 3,
          finetune_epochs: Annotated[int, typer.Option(help="retraining epochs (per round), at 1/10 the LR")] = 5,
          seed: Annotated[int, typer.Option(help="random seed")] = 0,
          out_path: Annotated[Optional[Path], typer.Option("--out", "-o", help="save pruned weights")] = None,
          json_path: JsonOpt = None) -> None:
    """Prune a model (training it first if a zoo name is given), retrain, and report."""
    from .flows.prune import prune_model
    from .methods import method_from_dict

    spec: dict = {"method": method, "targets": {"exclude": tuple(exclude or ())}}
    if method == "threshold":
        spec["quality"] = quality
    else:
        spec.update(sparsity=sparsity, scope=scope)
        if method == "magnitude":
            spec["layer_sparsity"] = _parse_layer_values(layer_sparsity)
    data = load_dataset(dataset, data_dir, download=download)
    _, result = prune_model(model, data, method_from_dict(spec), schedule=schedule, rounds=rounds,
                            finetune_epochs=finetune_epochs, seed=seed, out=str(out_path) if out_path else None)
    table = Table(title=f"{result['model']} pruned ({schedule})")
    for col in ("layer", "density"):
        table.add_column(col)
    for name, dens in result["densities"].items():
        table.add_row(name, f"{dens:.3f}")
    out.print(table)
    out.print(f"dense accuracy {result['dense_accuracy']:.4f}  pruned accuracy {result['pruned_accuracy']:.4f}  "
              f"non-zero {result['nonzero_weights']:,} / {result['total_weights']:,}  "
              f"compression {result['compression']:.1f}x")
    _emit_json(json_path, result)


@app.command()
def sensitivity(model: ModelArg = "lenet5", dataset: DatasetOpt = "digits", data_dir: DataDirOpt = None,
                download: DownloadOpt = False, seed: Annotated[int, typer.Option(help="random seed")] = 0,
                plot: Annotated[Path, typer.Option(help="PNG file for the accuracy-vs-sparsity plot")] = Path("sensitivity.png"),
                budget: Annotated[float, typer.Option(help="max accuracy drop for the suggested per-layer targets")] = 0.01,
                json_path: JsonOpt = None) -> None:
    """Prune each layer alone at 0..95% (no retraining): table, plot, and per-layer targets."""
    from .analysis.plots import plot_sensitivity
    from .flows.prune import dense_model, layer_sensitivity

    data = load_dataset(dataset, data_dir, download=download)
    net, arch, _ = dense_model(model, data, seed)
    curves = layer_sensitivity(net, data)
    plot_sensitivity(curves, plot, f"{arch} on {data.name}: per-layer pruning sensitivity")
    table = Table(title=f"accuracy (%) with one layer pruned; dense {100 * curves.baseline:.2f}")
    table.add_column("layer")
    for s in curves.sparsities:
        table.add_column(f"{int(round(100 * s))}%", justify="right")
    for row in curves.as_rows():
        table.add_row(*map(str, row))
    out.print(table)
    targets = curves.targets_for_budget(budget)
    out.print(f"most sensitive layer: {curves.most_sensitive()}; targets within {budget:.3f} drop: {targets}")
    console.print(f"wrote {plot}")
    _emit_json(json_path, {"model": arch, "dataset": data.name, "baseline": curves.baseline,
                           "sparsities": list(curves.sparsities), "accuracy": curves.accuracy,
                           "most_sensitive": curves.most_sensitive(), "targets": targets, "plot": str(plot)})


@app.command()
def quantize(model: ModelArg = "lenet5", dataset: DatasetOpt = "digits", data_dir: DataDirOpt = None,
             download: DownloadOpt = False,
             weight_bits: Annotated[int, typer.Option(help="weight bits (2..16), symmetric")] = 8,
             act_bits: Annotated[int, typer.Option(help="activation bits (2..16); 0 = weight-only")] = 8,
             granularity: Annotated[str, typer.Option(help="tensor, channel or group")] = "channel",
             group_size: Annotated[int, typer.Option(help="weights per group for --granularity group")] = 128,
             observer: Annotated[str, typer.Option(help="minmax, ema, percentile, mse or entropy")] = "minmax",
             dynamic: Annotated[bool, typer.Option(help="quantize activations at run time")] = False,
             per_token: Annotated[bool, typer.Option(help="dynamic: one activation scale per row")] = False,
             keep_8bit: Annotated[Optional[list[str]], typer.Option(help="layer kept at 8 bit (repeatable)")] = None,
             calib_images: Annotated[int, typer.Option(help="training images used for calibration")] = 512,
             seed: Annotated[int, typer.Option(help="random seed")] = 0,
             plot: Annotated[Optional[Path], typer.Option(help="PNG of per-layer output SQNR / cosine")] = None,
             out_path: Annotated[Optional[Path], typer.Option("--out", "-o", help="save the quantized model")] = None,
             json_path: JsonOpt = None) -> None:
    """Post-training quantization: accuracy before/after and per-layer error analysis."""
    from .flows.ptq import quantize_model
    from .quant.ptq import DynamicQuant, LinearQuant

    common = dict(weight_bits=weight_bits, granularity=granularity, group_size=group_size)
    if dynamic:
        method = DynamicQuant(**common, act_bits=act_bits or 8, per_token=per_token)
    else:
        method = LinearQuant(**common, act_bits=act_bits or None, observer=observer,
                             layer_bits={name: 8 for name in keep_8bit or ()})
    data = load_dataset(dataset, data_dir, download=download)
    _, _, result = quantize_model(model, data, method, seed=seed, calib_images=calib_images,
                                  out=str(out_path) if out_path else None)
    table = Table(title=f"{result['model']}: {method.name} W{weight_bits}A{act_bits or 32} {granularity}")
    for col in ("layer", "weight SQNR dB", "output SQNR dB", "output cosine"):
        table.add_column(col, justify="left" if col == "layer" else "right")
    for name, err in result["output_error"].items():
        table.add_row(name, f"{result['weight_sqnr_db'].get(name, float('inf')):.1f}", f"{err['sqnr_db']:.1f}",
                      f"{err['cosine']:.5f}")
    out.print(table)
    out.print(f"float accuracy {result['float_accuracy']:.4f}  quantized accuracy {result['quantized_accuracy']:.4f}")
    if plot is not None:
        from .analysis.plots import plot_layer_error
        plot_layer_error(result["output_error"], plot, f"{result['model']} {method.name} W{weight_bits}A{act_bits}")
        console.print(f"wrote {plot}")
    if out_path is not None:
        console.print(f"wrote {out_path} (reload with nncompress evaluate / nc.load_model)")
    _emit_json(json_path, result)


def _parse_bits(text: str) -> dict[str, int]:
    """'conv=8,fc=5' or 'conv1=8,fc=4' -> {'conv': 8, 'fc': 5}."""
    bits = {}
    for item in text.split(","):
        name, sep, value = item.partition("=")
        if not sep or not value.strip().isdigit():
            raise ValueError(f"--bits item {item!r} must look like NAME=BITS, e.g. conv=8,fc=5")
        bits[name.strip()] = int(value)
    return bits


@app.command("deep-compress")
def deep_compress_cmd(model: ModelArg = "lenet300", dataset: DatasetOpt = "digits", data_dir: DataDirOpt = None,
                      download: DownloadOpt = False,
                      prune_sparsity: Annotated[float, typer.Option(help="magnitude pruning target (0 = no pruning)")] = 0.92,
                      scope: Annotated[str, typer.Option(help="layer or global")] = "global",
                      schedule: Annotated[str, typer.Option(help="oneshot, iterative or agp")] = "iterative",
                      rounds: Annotated[int, typer.Option(help="iterative pruning rounds")] = 3,
                      finetune_epochs: Annotated[int, typer.Option(help="retraining epochs per pruning round")] = 5,
                      lr_factor: Annotated[float, typer.Option(help="retraining LR / original LR")] = 0.1,
                      bits: Annotated[str, typer.Option(help="cluster bits: conv=8,fc=5 (kinds or layer names)")] = "conv=8,fc=5",
                      codebook_epochs: Annotated[int, typer.Option(help="codebook fine-tuning epochs")] = 3,
                      seed: Annotated[int, typer.Option(help="random seed")] = 0,
                      out_path: Annotated[Path, typer.Option("--out", "-o", help="the .nnc file to write")] = Path("model.nnc"),
                      json_path: JsonOpt = None) -> None:
    """Deep Compression: prune, share weights (k-means), fine-tune codebooks, Huffman-code into .nnc."""
    from .flows.deep_compression import DeepCompressionConfig, deep_compress
    from .prune.unstructured import MagnitudePrune

    prune_method = MagnitudePrune(sparsity=prune_sparsity, scope=scope) if prune_sparsity > 0 else None
    config = DeepCompressionConfig(prune=prune_method, schedule=schedule, rounds=rounds, finetune_epochs=finetune_epochs,
                                   lr_factor=lr_factor, bits=_parse_bits(bits), codebook_epochs=codebook_epochs)
    data = load_dataset(dataset, data_dir, download=download)
    _, result = deep_compress(model, data, config, seed=seed, out=out_path)
    out.print(_deep_compression_table(result["layers"], f"{result['model']} -> {out_path}"))
    out.print(f"dense accuracy {result['dense_accuracy']:.4f}  compressed accuracy {result['compressed_accuracy']:.4f} "
              f"(decoded from the file)  {result['dense_bytes']:,} B -> {result['file_bytes']:,} B = "
              f"{result['compression']:.1f}x  exact round trip: {result['exact_roundtrip']}")
    _emit_json(json_path, result)


def _deep_compression_table(rows: list[dict], title: str) -> Table:
    table = Table(title=title)
    columns = ("layer", "weights", "kept (P)", "weight bits P+Q", "P+Q+H", "index bits P+Q", "P+Q+H",
               "rate P+Q", "rate P+Q+H")
    for col in columns:
        table.add_column(col, justify="left" if col == "layer" else "right")
    for r in rows:
        table.add_row(r["layer"], f"{r['weights']:,}", f"{100 * r['kept']:.1f}%", str(r["weight_bits_pq"]),
                      f"{r['weight_bits_pqh']:.2f}", str(r["index_bits_pq"]), f"{r['index_bits_pqh']:.2f}",
                      f"{100 * r['rate_pq']:.2f}%", f"{100 * r['rate_pqh']:.2f}%")
    return table


@app.command()
def decode(path: Annotated[Path, typer.Argument(help="a .nnc file")], dataset: DatasetOpt = "digits",
           data_dir: DataDirOpt = None, download: DownloadOpt = False,
           out_path: Annotated[Optional[Path], typer.Option("--out", "-o", help="save as .safetensors")] = None,
           json_path: JsonOpt = None) -> None:
    """Rebuild a working model from a .nnc file and evaluate it."""
    from .encode.container import read_nnc
    from .encode.deep_compression import decode_model

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
    _emit_json(json_path, result)


@app.command("methods")
def list_methods() -> None:
    """List the registered methods (YAML names) and their fields."""
    import dataclasses

    from .methods import METHODS

    for name, cls in sorted(METHODS.items()):
        fields = ", ".join(f.name for f in dataclasses.fields(cls))
        out.print(f"[bold]{name}[/] ({cls.__name__}): {fields}")


def _inspect_nnc(path: Path, json_path: Optional[Path]) -> None:
    from .encode.container import read_nnc
    from .flows.deep_compression import layer_row

    nnc = read_nnc(path)
    rows = [layer_row(layer) for layer in nnc.layers]
    out.print(_deep_compression_table(rows, f"{path} ({path.stat().st_size:,} B): {nnc.model}"))
    _emit_json(json_path, {"file": str(path), "file_bytes": path.stat().st_size, "model": nnc.model,
                           "layers": rows, "tensors": {k: list(v.shape) for k, v in nnc.tensors.items()}})


@app.command()
def demo(json_path: JsonOpt = None) -> None:
    """Deep Compression of LeNet-300-100 on the embedded digits data (no network, no download):
    train, prune, share weights, Huffman-code into runs/demo.nnc, decode and evaluate."""
    deep_compress_cmd(model="lenet300", dataset="digits", prune_sparsity=0.9, scope="global", schedule="iterative",
                      rounds=3, finetune_epochs=3, lr_factor=0.3, bits="fc=5", codebook_epochs=2,
                      out_path=Path("runs/demo.nnc"), json_path=json_path)


def main() -> None:
    """Entry point: turn user-input errors into one clear line and exit code 2."""
    try:
        app()
    except (ValueError, FileNotFoundError) as err:
        console.print(f"[bold red]error:[/] {err}")
        sys.exit(2)


if __name__ == "__main__":
    main()
