"""What every command module shares: the typer `app`, the consoles, the option types, and the
helpers that parse options into Methods and print / write figures. A command module imports from
here and decorates its functions with `@app.command(...)`; `cli/__init__.py` imports it."""
from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
import typer.rich_utils
import yaml
from rich.console import Console
from rich.table import Table

from .. import api
from ..config import Method, per_layer
from ..fileio import write_json
from ..methods import METHODS, method_from_dict
from ..train import is_main_process
from ..validate import UserError, unknown_name_error
from ..zoo import DATASETS, MODELS, Dataset

app = typer.Typer(help="Prune and quantize PyTorch models, and measure what it buys.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
console = Console(stderr=True)
PIPE_WIDTH = 120  # columns of tables and --help when stdout is not a terminal (rich's default there: 80)
out = Console(width=None if sys.stdout.isatty() else PIPE_WIDTH)  # wide tables in logs and pipes too
if not sys.stdout.isatty() and typer.rich_utils.MAX_WIDTH is None:  # TERMINAL_WIDTH unset: --help unclipped too
    typer.rich_utils.MAX_WIDTH = PIPE_WIDTH

ModelArg = Annotated[str, typer.Argument(help=f"zoo model ({', '.join(MODELS)}) or a saved .safetensors / .nnc file")]
DatasetOpt = Annotated[str, typer.Option("--dataset", "-d", help=f"one of: {', '.join(DATASETS)}")]
DataDirOpt = Annotated[Optional[str], typer.Option("--data-dir", help="folder holding (or receiving) the dataset files")]
DownloadOpt = Annotated[bool, typer.Option("--download", help="download missing dataset files (needs a network)")]
JsonOpt = Annotated[Optional[Path], typer.Option("--json", help="also write the figures as JSON to this path")]


def emit_json(path: Optional[Path], result: dict) -> None:
    if path is not None and is_main_process():
        write_json(path, result)
        console.print(f"wrote {path}")


def layer_table(rows: list[dict], title: str) -> Table:
    table = Table(title=title)
    for col in ("layer", "type", "shape", "params", "MACs", "density", "bits"):
        table.add_column(col, justify="left" if col in ("layer", "type", "shape") else "right")
    for row in rows:
        table.add_row(row["name"], row["kind"], "x".join(map(str, row["shape"])), f"{row['params']:,}",
                      f"{row['macs']:,}", f"{row['density']:.3f}", str(row["bits"]))
    return table


def print_summary(result: dict, title: str) -> None:
    if not is_main_process():
        return
    out.print(layer_table(result["layers"], title))
    out.print(f"params {result['params']:,}  non-zero {result['nonzero']:,}  MACs {result['macs']:,}  "
              f"test accuracy {result['test_accuracy']:.4f}")


def check_out_path(path: Optional[Path], option: str) -> None:
    """Fail before any work when an output path cannot be written (a folder, a file as parent)."""
    if path is None:
        return
    if path.is_dir():
        raise UserError(f"{option} {str(path)!r} is a folder; give a file name, e.g. {str(path / 'model.safetensors')!r}")
    parent = next((p for p in path.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise UserError(f"{option} {str(path)!r}: {str(parent)!r} is a file, not a folder")
    try:  # missing folders are created now, so one that cannot be fails before any work
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"{option} {str(path)!r}: cannot create its folder ({exc.strerror or exc})") from None


def check_checkpoint(path: Path) -> None:
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


def parse_pairs(text: Optional[str], option: str, example: str) -> dict[str, str]:
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


def parse_layer_values(text: Optional[str]) -> dict[str, float]:
    """'fc1=0.9,fc3=0.75' -> {'fc1': 0.9, 'fc3': 0.75} (layer names or 're:' / 'type:' patterns)."""
    values = {}
    for name, value in parse_pairs(text, "--layer-sparsity", "fc1=0.92,fc3=0.75").items():
        try:
            values[name] = float(value)
        except ValueError:
            raise UserError(f"--layer-sparsity {name}={value!r}: the value must be a fraction in [0, 1)") from None
    return values


#: a number in scientific notation without a decimal point, which YAML 1.1 leaves a string
SCIENTIFIC = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+")


def parse_sets(items: Optional[list[str]]) -> dict[str, Any]:
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
        if isinstance(value, str) and SCIENTIFIC.fullmatch(value.strip()):
            value = float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string
        head, _, sub = key.strip().partition(".")
        if sub:
            fields.setdefault(head, {})[sub] = value
        else:
            fields[head] = value
    return fields


def flag(field: str) -> str:
    return "--" + field.replace("_", "-")


def given(**flags: Any) -> dict[str, Any]:
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
            raise UserError(f"{flag(key)} does not apply to --method {name} (its fields: "
                            f"{', '.join(sorted(fields))}; set them with --set FIELD=VALUE)")
        spec[key] = value
    for key, value in parse_sets(sets).items():
        spec[key] = {**spec.get(key, {}), **value} if key == "targets" else value
    return method_from_dict({"method": name, **spec})


def method_label(method: Method) -> str:
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


QuantizeOpt = Annotated[str, typer.Option(help="if the model is not quantized yet: static (W8A8 per channel, BatchNorm "
                                               "folded), dynamic (W8, per-token activations) or none")]
WeightRangeOpt = Annotated[str, typer.Option(help="int8 weights as: auto (probe this machine), full, reduce (7-bit) or uint8")]


def torch_threads() -> int:
    """How many intra-op threads torch uses now (what a command reports and hands to ONNX Runtime);
    `sweep.pinned_torch_threads` is the context manager that sets it for a block."""
    import torch
    return torch.get_num_threads()



def deep_compression_table(rows: list[dict], title: str, overhead: dict | None = None) -> Table:
    """Han 2016 table 2 per layer; the `bytes` column (plus the header row) adds up to the file."""
    table = Table(title=title)
    columns = ("layer", "stored as", "weights", "kept (P)", "weight bits P+Q", "P+Q+H", "index bits P+Q", "P+Q+H",
               "rate P+Q", "rate P+Q+H", "bytes")
    widest_kind = max((len(r.get("stored_as", "")) for r in rows), default=0)
    for col in columns:
        table.add_column(col, justify="left" if col in ("layer", "stored as") else "right",
                         min_width=widest_kind if col == "stored as" else None)
    for r in rows:
        table.add_row(r["layer"], r.get("stored_as", ""), f"{r['weights']:,}", f"{100 * r['kept']:.1f}%",
                      f"{r['weight_bits_pq']:.2f}",
                      f"{r['weight_bits_pqh']:.2f}", str(r["index_bits_pq"]), f"{r['index_bits_pqh']:.2f}",
                      f"{100 * r['rate_pq']:.2f}%", f"{100 * r['rate_pqh']:.2f}%", f"{r['bytes']:,}")
    if overhead is not None:
        table.add_row(overhead["layer"], *[""] * (len(columns) - 2), f"{overhead['bytes']:,}")
    return table

