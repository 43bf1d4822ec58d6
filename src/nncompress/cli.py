"""The `nncompress` command line: a thin layer over `nncompress.api`.

Every command that produces figures prints a table and, with `--json PATH`, writes them as JSON.
"""
from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
import yaml
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from . import api
from .config import Method, per_layer
from .fileio import write_json
from .methods import METHODS, method_from_dict
from .train import evaluate as evaluate_model
from .train import is_main_process
from .validate import UserError, check_fraction, unknown_name_error
from .zoo import DATASETS, MODELS, Dataset, load_dataset

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
    _check_out_path(out_path, "--out")
    _check_out_path(checkpoint, "--checkpoint")
    if resume and checkpoint is not None and checkpoint.is_file():
        _check_checkpoint(checkpoint)
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


def _check_out_path(path: Optional[Path], option: str) -> None:
    """Fail before any work when an output path cannot be written (a folder, a file as parent)."""
    if path is None:
        return
    if path.is_dir():
        raise UserError(f"{option} {str(path)!r} is a folder; give a file name, e.g. {str(path / 'model.safetensors')!r}")
    parent = next((p for p in path.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise UserError(f"{option} {str(path)!r}: {str(parent)!r} is a file, not a folder")


def _check_checkpoint(path: Path) -> None:
    """--resume: the checkpoint must be one `train` wrote (tensors and plain types only), checked
    before training starts."""
    import torch

    try:
        state = torch.load(path, weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unreadable file (pickle, zip, EOF errors) is the user's
        raise UserError(f"--checkpoint {str(path)!r} is not a training checkpoint "
                        f"({type(err).__name__}: {str(err)[:120]})") from None
    if not isinstance(state, dict) or not {"model", "optimizer", "scheduler"} <= state.keys():
        raise UserError(f"--checkpoint {str(path)!r} is not a training checkpoint (no model / optimizer / scheduler)")


def _parse_pairs(text: Optional[str], option: str, example: str) -> dict[str, str]:
    """'fc1=0.9,fc3=0.75' -> {'fc1': '0.9', 'fc3': '0.75'}; a malformed item is a UserError."""
    pairs = {}
    for item in (text or "").split(","):
        if not item.strip():
            continue
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise UserError(f"{option} item {item!r} must look like NAME=VALUE, e.g. {example}")
        pairs[name.strip()] = value.strip()
    return pairs


def _parse_layer_values(text: Optional[str]) -> dict[str, float]:
    """'fc1=0.9,fc3=0.75' -> {'fc1': 0.9, 'fc3': 0.75} (layer names or 're:' / 'type:' patterns)."""
    values = {}
    for name, value in _parse_pairs(text, "--layer-sparsity", "fc1=0.92,fc3=0.75").items():
        try:
            values[name] = float(value)
        except ValueError:
            raise UserError(f"--layer-sparsity {name}={value!r}: the value must be a fraction in [0, 1)") from None
    return values


def _parse_sets(items: Optional[list[str]]) -> dict[str, Any]:
    """--set FIELD=VALUE items -> {field: YAML-parsed value}; 'targets.exclude=[conv1]' sets a
    field of the method's `targets`."""
    fields: dict[str, Any] = {}
    for item in items or ():
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set {item!r} must look like FIELD=VALUE, e.g. --set sparsity=0.8 "
                            "(`nncompress methods` lists each method's fields)")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise UserError(f"--set {item!r}: the value is not valid YAML ({err})") from None
        head, _, sub = key.strip().partition(".")
        if sub:
            fields.setdefault(head, {})[sub] = value
        else:
            fields[head] = value
    return fields


def _flag(field: str) -> str:
    return "--" + field.replace("_", "-")


def _given(**flags: Any) -> dict[str, Any]:
    """The flags the user gave (None = not given)."""
    return {key: value for key, value in flags.items() if value is not None}


def method_names(family: str) -> dict[str, type[Method]]:
    """The registered methods defined in package `nncompress.<family>` ("prune" or "quant")."""
    return {name: cls for name, cls in sorted(METHODS.items()) if cls.__module__.startswith(f"nncompress.{family}.")}


def build_method(name: str, family: str, flags: dict[str, Any], sets: Optional[list[str]],
                 defaults: Optional[dict[str, Any]] = None) -> Method:
    """The Method `name` built from its dataclass fields: `defaults` (CLI defaults, used when the
    method has the field), then the `flags` given (field -> value; a flag the method has no field
    for is an error), then --set FIELD=VALUE. `family` ("prune" / "quant") limits the names."""
    choices = method_names(family)
    if name not in choices:
        raise unknown_name_error("method", name, choices)
    fields = {f.name for f in dataclasses.fields(choices[name])}
    spec: dict[str, Any] = {k: v for k, v in (defaults or {}).items() if k in fields}
    for key, value in flags.items():
        if key not in fields:
            raise UserError(f"{_flag(key)} does not apply to --method {name} (its fields: "
                            f"{', '.join(sorted(fields))}; set them with --set FIELD=VALUE)")
        spec[key] = value
    for key, value in _parse_sets(sets).items():
        spec[key] = {**spec.get(key, {}), **value} if key == "targets" else value
    return method_from_dict({"method": name, **spec})


def _method_label(method: Method) -> str:
    """'linear weight_bits=4 act_bits=None': the name and the fields that differ from the defaults."""
    changed = []
    for f in dataclasses.fields(method):
        value = getattr(method, f.name)
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if f.name != "targets" and value != default:
            changed.append(f"{f.name}={value}")
    return " ".join([method.name, *changed])


def check_layer_keys(method: Method, model_spec: str, data: Dataset) -> None:
    """Fail fast, before any training: the method's layer names (targets and the keys of per-layer
    maps such as layer_sparsity / layer_bits) must name layers of the model (did-you-mean UserError)."""
    net, _, _ = api.resolve_model(model_spec, data)
    layers = method.targets.layers(net)
    for f in dataclasses.fields(method):
        value = getattr(method, f.name)
        if isinstance(value, dict) and value:
            per_layer(value, layers, None, f.name)


SetOpt = Annotated[Optional[list[str]], typer.Option(
    "--set", help="FIELD=VALUE for any field of the method, YAML value (repeatable): --set sparsity=0.8, "
                  "--set 'layer_bits={fc3: 8}', --set targets.exclude=conv1; `nncompress methods` lists the fields")]
ExcludeOpt = Annotated[Optional[list[str]], typer.Option(help="layer name to leave untouched (repeatable)")]


@app.command()
def prune(model: ModelArg = "lenet300", dataset: DatasetOpt = "digits", data_dir: DataDirOpt = None,
          download: DownloadOpt = False,
          method: Annotated[str, typer.Option(help=f"one of: {', '.join(method_names('prune'))}")] = "magnitude",
          sparsity: Annotated[Optional[float], typer.Option(help="fraction of targeted weights removed, in [0, 1) (default 0.9)")] = None,
          scope: Annotated[Optional[str], typer.Option(help="layer (each layer) or global (one threshold)")] = None,
          layer_sparsity: Annotated[Optional[str], typer.Option(help="per-layer targets (names or re: / type: patterns), both scopes: fc1=0.92,fc3=0.75")] = None,
          quality: Annotated[Optional[float], typer.Option(help="threshold method: keep |w| > quality * std(w) (default 1.0)")] = None,
          exclude: ExcludeOpt = None, set_fields: SetOpt = None,
          schedule: Annotated[str, typer.Option(help="oneshot, iterative or agp")] = "iterative",
          rounds: Annotated[int, typer.Option(min=1, help="iterative: prune-retrain cycles")] = 3,
          finetune_epochs: Annotated[int, typer.Option(min=0, help="retraining epochs (per round), at 1/10 the LR")] = 5,
          seed: Annotated[int, typer.Option(help="random seed")] = 0,
          out_path: Annotated[Optional[Path], typer.Option("--out", "-o", help="save pruned weights")] = None,
          json_path: JsonOpt = None) -> None:
    """Prune a model (training it first if a zoo name is given), retrain, and report."""
    from .flows.prune import prune_model

    flags = _given(sparsity=sparsity, scope=scope, quality=quality,
                   layer_sparsity=_parse_layer_values(layer_sparsity) or None,
                   targets={"exclude": list(exclude)} if exclude else None)
    pruner = build_method(method, "prune", flags, set_fields, defaults={"sparsity": 0.9, "quality": 1.0})
    if schedule != "oneshot" and not any(f.name == "sparsity" for f in dataclasses.fields(pruner)):
        raise UserError(f"--schedule {schedule} re-applies the method at rising sparsity, but --method {method} "
                        "has no sparsity field: use --schedule oneshot")
    _check_out_path(out_path, "--out")
    data = load_dataset(dataset, data_dir, download=download)
    check_layer_keys(pruner, model, data)
    _, result = prune_model(model, data, pruner, schedule=schedule, rounds=rounds,
                            finetune_epochs=finetune_epochs, seed=seed, out=str(out_path) if out_path else None)
    table = Table(title=f"{result['model']} pruned ({_method_label(pruner)}, {schedule})")
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

    check_fraction("--budget", budget, allow_one=True)
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
             method: Annotated[str, typer.Option(help=f"one of: {', '.join(method_names('quant'))}")] = "linear",
             weight_bits: Annotated[Optional[int], typer.Option(help="weight bits (2..16), symmetric (default 8)")] = None,
             act_bits: Annotated[Optional[int], typer.Option(help="activation bits (2..16); 0 = weight-only (default 8)")] = None,
             granularity: Annotated[Optional[str], typer.Option(help="tensor, channel or group (default channel)")] = None,
             group_size: Annotated[Optional[int], typer.Option(help="weights per group for --granularity group")] = None,
             observer: Annotated[Optional[str], typer.Option(help="minmax, ema, percentile, mse or entropy")] = None,
             dynamic: Annotated[bool, typer.Option(help="same as --method dynamic")] = False,
             per_token: Annotated[Optional[bool], typer.Option("--per-token", help="dynamic: one activation scale per row")] = None,
             keep_8bit: Annotated[Optional[list[str]], typer.Option(help="layer kept at 8 bit (repeatable)")] = None,
             exclude: ExcludeOpt = None, set_fields: SetOpt = None,
             calib_images: Annotated[int, typer.Option(min=1, help="training images used for calibration")] = 512,
             seed: Annotated[int, typer.Option(help="random seed")] = 0,
             plot: Annotated[Optional[Path], typer.Option(help="PNG of per-layer output SQNR / cosine")] = None,
             out_path: Annotated[Optional[Path], typer.Option("--out", "-o", help="save the quantized model")] = None,
             json_path: JsonOpt = None) -> None:
    """Post-training quantization with any quantization method: accuracy before/after and per-layer
    error analysis (e.g. --method format --set weight_format=fp4_e2m1 --set act_format=fp8_e4m3)."""
    from .flows.ptq import quantize_model

    if dynamic and method not in ("linear", "dynamic"):
        raise UserError(f"--dynamic means --method dynamic, which contradicts --method {method}")
    name = "dynamic" if dynamic else method
    flags = _given(weight_bits=weight_bits, granularity=granularity, group_size=group_size, observer=observer,
                   per_token=per_token, act_bits=act_bits, layer_bits={layer: 8 for layer in keep_8bit or ()} or None,
                   targets={"exclude": list(exclude)} if exclude else None)
    if act_bits == 0:
        flags["act_bits"] = _weight_only(name)
    quantizer = build_method(name, "quant", flags, set_fields)
    _check_out_path(out_path, "--out")
    data = load_dataset(dataset, data_dir, download=download)
    check_layer_keys(quantizer, model, data)
    _, _, result = quantize_model(model, data, quantizer, seed=seed, calib_images=calib_images,
                                  out=str(out_path) if out_path else None)
    label = _method_label(quantizer)
    table = Table(title=f"{result['model']}: {label}")
    for col in ("layer", "weight SQNR dB", "output SQNR dB", "output cosine"):
        table.add_column(col, justify="left" if col == "layer" else "right")
    for layer, err in result["output_error"].items():
        table.add_row(layer, f"{result['weight_sqnr_db'].get(layer, float('inf')):.1f}", f"{err['sqnr_db']:.1f}",
                      f"{err['cosine']:.5f}")
    out.print(table)
    out.print(f"float accuracy {result['float_accuracy']:.4f}  quantized accuracy {result['quantized_accuracy']:.4f}")
    if plot is not None:
        from .analysis.plots import plot_layer_error
        plot_layer_error(result["output_error"], plot, f"{result['model']} {label}")
        console.print(f"wrote {plot}")
    if out_path is not None:
        console.print(f"wrote {out_path} (reload with nncompress evaluate / nc.load_model)")
    _emit_json(json_path, result)


def _weight_only(method: str) -> Optional[int]:
    """What --act-bits 0 means: act_bits=None (weight-only) for a method whose act_bits may be None;
    0 otherwise, which the method then rejects naming the field and its range."""
    cls = METHODS.get(method)
    act = next((f for f in dataclasses.fields(cls) if f.name == "act_bits"), None) if cls else None
    return None if act is not None and "None" in str(act.type) else 0


def _parse_bits(text: str) -> dict[str, int]:
    """'conv=8,fc=5' -> {'type:Conv1d|Conv2d|Conv3d': 8, 'type:Linear': 5} (the kind words become
    layer patterns: KMeansQuant.layer_bits takes names and patterns only); layer names ('conv1=8')
    and patterns ('re:fc[12]=4') pass through."""
    from .flows.deep_compression import LAYER_KINDS

    bits = {}
    for name, value in _parse_pairs(text, "--bits", "conv=8,fc=5").items():
        if not value.isdigit():
            raise UserError(f"--bits {name}={value!r}: the value must be a whole number of bits, e.g. conv=8,fc=5")
        bits[LAYER_KINDS.get(name, name)] = int(value)
    if not bits:
        raise UserError("--bits is empty; give NAME=BITS items, e.g. conv=8,fc=5")
    return bits


@app.command("deep-compress")
def deep_compress_cmd(model: ModelArg = "lenet300", dataset: DatasetOpt = "digits", data_dir: DataDirOpt = None,
                      download: DownloadOpt = False,
                      prune_sparsity: Annotated[float, typer.Option(help="magnitude pruning target (0 = no pruning)")] = 0.92,
                      scope: Annotated[str, typer.Option(help="layer or global")] = "global",
                      schedule: Annotated[str, typer.Option(help="oneshot, iterative or agp")] = "iterative",
                      rounds: Annotated[int, typer.Option(min=1, help="iterative pruning rounds")] = 3,
                      finetune_epochs: Annotated[int, typer.Option(min=0, help="retraining epochs per pruning round")] = 5,
                      lr_factor: Annotated[float, typer.Option(help="retraining LR / original LR")] = 0.1,
                      bits: Annotated[str, typer.Option(help="cluster bits: conv=8,fc=5 (kinds conv / fc, layer names or "
                                                                "'re:' / 'type:' patterns)")] = "conv=8,fc=5",
                      codebook_epochs: Annotated[int, typer.Option(min=0, help="codebook fine-tuning epochs")] = 3,
                      seed: Annotated[int, typer.Option(help="random seed")] = 0,
                      out_path: Annotated[Path, typer.Option("--out", "-o", help="the .nnc file to write")] = Path("model.nnc"),
                      json_path: JsonOpt = None) -> None:
    """Deep Compression: prune, share weights (k-means), fine-tune codebooks, Huffman-code into .nnc."""
    from .flows.deep_compression import DeepCompressionConfig, deep_compress
    from .prune.unstructured import MagnitudePrune
    from .quant.kmeans import KMeansQuant

    check_fraction("--prune-sparsity", prune_sparsity)
    _check_out_path(out_path, "--out")
    prune_method = MagnitudePrune(sparsity=prune_sparsity, scope=scope) if prune_sparsity > 0 else None
    layer_bits = _parse_bits(bits)
    config = DeepCompressionConfig(prune=prune_method, schedule=schedule, rounds=rounds, finetune_epochs=finetune_epochs,
                                   lr_factor=lr_factor, bits=layer_bits, codebook_epochs=codebook_epochs)
    data = load_dataset(dataset, data_dir, download=download)
    check_layer_keys(KMeansQuant(layer_bits=layer_bits), model, data)
    _, result = deep_compress(model, data, config, seed=seed, out=out_path)
    out.print(_deep_compression_table(result["layers"], f"{result['model']} -> {out_path}", result["overhead"]))
    out.print(f"dense accuracy {result['dense_accuracy']:.4f}  compressed accuracy {result['compressed_accuracy']:.4f} "
              f"(decoded from the file)  {result['dense_bytes']:,} B -> {result['file_bytes']:,} B = "
              f"{result['compression']:.1f}x  exact round trip: {result['exact_roundtrip']}")
    _emit_json(json_path, result)


def _deep_compression_table(rows: list[dict], title: str, overhead: dict | None = None) -> Table:
    """Han 2016 table 2 per layer; the `bytes` column (plus the header row) adds up to the file."""
    table = Table(title=title)
    columns = ("layer", "weights", "kept (P)", "weight bits P+Q", "P+Q+H", "index bits P+Q", "P+Q+H",
               "rate P+Q", "rate P+Q+H", "bytes")
    for col in columns:
        table.add_column(col, justify="left" if col == "layer" else "right")
    for r in rows:
        table.add_row(r["layer"], f"{r['weights']:,}", f"{100 * r['kept']:.1f}%", str(r["weight_bits_pq"]),
                      f"{r['weight_bits_pqh']:.2f}", str(r["index_bits_pq"]), f"{r['index_bits_pqh']:.2f}",
                      f"{100 * r['rate_pq']:.2f}%", f"{100 * r['rate_pqh']:.2f}%", f"{r['bytes']:,}")
    if overhead is not None:
        table.add_row(overhead["layer"], *[""] * (len(columns) - 2), f"{overhead['bytes']:,}")
    return table


@app.command()
def decode(path: Annotated[Path, typer.Argument(help="a .nnc file")], dataset: DatasetOpt = "digits",
           data_dir: DataDirOpt = None, download: DownloadOpt = False,
           out_path: Annotated[Optional[Path], typer.Option("--out", "-o", help="save as .safetensors")] = None,
           json_path: JsonOpt = None) -> None:
    """Rebuild a working model from a .nnc file and evaluate it."""
    from .encode.container import read_nnc
    from .encode.model import decode_model

    _check_out_path(out_path, "--out")
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


def _export_inputs(model: str, dataset: str, data_dir: Optional[str], download: bool, calib_images: int,
                   quantize: str, seed: int):
    """(float model, converted int8 model, data, arch, calibration batches) for export / bench."""
    from .export.bench import QUANTIZE_CHOICES, quantize_for_export
    from .validate import check_choice

    check_choice("--quantize", quantize, QUANTIZE_CHOICES)
    data = load_dataset(dataset, data_dir, download=download)
    net, arch, _ = api.resolve_model(model, data, seed=seed)
    calib, seen = [], 0
    for x, _ in data.train_loader(min(calib_images, 128), seed=seed):
        calib.append(x)
        seen += len(x)
        if seen >= calib_images:
            break
    return net.eval(), quantize_for_export(net, quantize, calib), data, arch, calib


QuantizeOpt = Annotated[str, typer.Option(help="if the model is not quantized yet: static (W8A8 per channel, BatchNorm "
                                               "folded), dynamic (W8, per-token activations) or none")]
WeightRangeOpt = Annotated[str, typer.Option(help="int8 weights as: auto (probe this machine), full, reduce (7-bit) or uint8")]


@app.command()
def export(model: ModelArg, onnx_path: Annotated[Path, typer.Option("--onnx", help="the .onnx file to write")],
           format: Annotated[str, typer.Option("--format", help="qdq or qoperator")] = "qdq",
           weight_range: WeightRangeOpt = "auto", quantize: QuantizeOpt = "static",
           dataset: DatasetOpt = "digits", data_dir: DataDirOpt = None, download: DownloadOpt = False,
           calib_images: Annotated[int, typer.Option(min=1, help="training images for calibration")] = 256,
           check_images: Annotated[int, typer.Option(min=0, help="test images to compare ONNX Runtime with PyTorch")] = 500,
           seed: Annotated[int, typer.Option(help="random seed (zoo models)")] = 0,
           json_path: JsonOpt = None) -> None:
    """Export a (quantized) model to ONNX (QDQ or QOperator) and check it in ONNX Runtime."""
    from .export.onnx import export_onnx
    from .export.graph import ort_session
    from .export.bench import compare_on_data

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
    _emit_json(json_path, summary)


def torch_threads() -> int:
    import torch
    return torch.get_num_threads()


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
    """Latency / throughput: float32 PyTorch, int8 PyTorch (quantize_dynamic, Linear models), float32 ONNX
    Runtime and the int8 ONNX export, timed interleaved in one process."""
    import torch

    from .export.bench import bench_backends, torch_dynamic_int8
    from .quant.fold import fold_batchnorm_

    float_net, net, data, arch, calib = _export_inputs(model, dataset, data_dir, download, calib_images, quantize, seed)
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
    _emit_json(json_path, {"model": arch, "dataset": data.name, **result})


@app.command("methods")
def list_methods() -> None:
    """List the registered methods (YAML names) and their fields."""
    for name, cls in sorted(METHODS.items()):
        fields = ", ".join(f.name for f in dataclasses.fields(cls))
        out.print(f"[bold]{name}[/] ({cls.__name__}): {fields}")


def _inspect_nnc(path: Path, json_path: Optional[Path]) -> None:
    from .encode.container import read_nnc
    from .encode.model import decoded_state
    from .flows.deep_compression import layer_row, overhead_row

    nnc = read_nnc(path)
    decoded_state(nnc)  # every chain decodes (a bad file is refused here, not summarised)
    rows, overhead = [_layer_row(layer_row, layer, path) for layer in nnc.layers], overhead_row(nnc)
    out.print(_deep_compression_table(rows, f"{path} ({path.stat().st_size:,} B): {nnc.model}", overhead))
    _emit_json(json_path, {"file": str(path), "file_bytes": path.stat().st_size, "model": nnc.model,
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


@app.command()
def demo(json_path: JsonOpt = None) -> None:
    """Deep Compression of LeNet-300-100 on the embedded digits data (no network, no download):
    train, prune, share weights, Huffman-code into runs/demo.nnc, decode and evaluate."""
    deep_compress_cmd(model="lenet300", dataset="digits", prune_sparsity=0.9, scope="global", schedule="iterative",
                      rounds=3, finetune_epochs=3, lr_factor=0.3, bits="fc=5", codebook_epochs=2,
                      out_path=Path("runs/demo.nnc"), json_path=json_path)


def main() -> None:
    """Entry point: user-input errors (`UserError`, a missing file) become one clear line and exit
    code 2; any other exception is a bug and keeps its traceback."""
    try:
        app()
    except (UserError, FileNotFoundError) as err:
        console.print(f"[bold red]error:[/] {escape(str(err))}", highlight=False, soft_wrap=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
