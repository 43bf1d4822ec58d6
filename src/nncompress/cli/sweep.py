"""`nncompress sweep`: a grid of trials of one flow (seeds x --set axes) on Ray or in process."""
from __future__ import annotations

from typing import Annotated, Any, Optional

import typer
import yaml
from rich.table import Table

from ..validate import UserError
from .common import JsonOpt, app, emit_json, given, out


def parse_axes(items: Optional[list[str]]) -> dict[str, list[Any]]:
    """--set NAME=V1,V2 items -> {NAME: [V1, V2]} (each value parsed as YAML: 0.8 -> float, layer -> str)."""
    axes: dict[str, list[Any]] = {}
    for item in items or ():
        name, sep, text = item.partition("=")
        if not sep or not name.strip() or not text.strip():
            raise UserError(f"--set {item!r} must look like NAME=V1,V2,..., e.g. --set sparsity=0.8,0.9")
        values = []
        for part in text.split(","):
            try:
                values.append(yaml.safe_load(part.strip()))
            except yaml.YAMLError as err:
                raise UserError(f"--set {item!r}: {part!r} is not a valid YAML value ({err})") from None
        if any(v is None for v in values):
            raise UserError(f"--set {item!r} has an empty value")
        axes[name.strip()] = values
    return axes


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--seeds {text!r} must be whole numbers separated by commas, e.g. 0,1,2") from None
    if not seeds:
        raise UserError("--seeds is empty; give e.g. 0,1,2")
    return seeds


def _short(value: Any) -> str:
    """A file path as its name (recipe grids), anything else as str."""
    text = str(value)
    return text.rsplit("/", 1)[-1] if isinstance(value, str) and text.endswith((".yaml", ".yml")) else text


def rows_table(rows: list[dict], title: str) -> Table:
    table = Table(title=title)
    columns = list(rows[0]) if rows else []
    for col in columns:
        table.add_column(col, justify="right")
    for row in rows:
        table.add_row(*[f"{v:.4g}" if isinstance(v, float) else _short(v) for v in (row.get(c) for c in columns)])
    return table


def _mean_std(row: dict, fixed: dict) -> dict:
    """A summary row for the screen: the varying params, the trial count, each figure as 'mean ± std'."""
    shown = {k: v for k, v in row.items() if k not in fixed and not k.endswith(("_mean", "_std"))}
    for key, mean in row.items():
        if key.endswith("_mean"):
            shown[key.removesuffix("_mean")] = f"{mean:.4g} ± {row[key.removesuffix('_mean') + '_std']:.2g}"
    return shown


@app.command()
def sweep(flow: Annotated[str, typer.Argument(help="prune, deep-compress, sensitivity or recipe")] = "prune",
          model: Annotated[Optional[str], typer.Option(help="zoo model or saved model (default lenet300)")] = None,
          dataset: Annotated[Optional[str], typer.Option("--dataset", "-d", help="dataset name (default digits, "
                                                                                 "or the recipe's)")] = None,
          seeds: Annotated[str, typer.Option(help="seeds, comma-separated: one trial per seed and grid point")] = "0",
          sets: Annotated[Optional[list[str]], typer.Option(
              "--set", help="grid axis NAME=V1,V2 (repeatable): a method field (sparsity=0.8,0.9, scope=layer,global), "
                            "bits.fc=4,5 (deep-compress), layer=fc1,fc2 (sensitivity), recipe=a.yaml,b.yaml (recipe)")] = None,
          method: Annotated[Optional[str], typer.Option(help="pruning method (registered name; default magnitude)")] = None,
          schedule: Annotated[Optional[str], typer.Option(help="oneshot, iterative or agp")] = None,
          rounds: Annotated[Optional[int], typer.Option(min=1, help="iterative pruning rounds")] = None,
          finetune_epochs: Annotated[Optional[int], typer.Option(min=0, help="retraining epochs per round")] = None,
          epochs: Annotated[Optional[int], typer.Option(min=0, help="dense training epochs (default: recipe)")] = None,
          backend: Annotated[str, typer.Option(help="auto (Ray if installed), ray or local")] = "auto",
          address: Annotated[Optional[str], typer.Option(help="an existing Ray cluster (default: a local Ray)")] = None,
          num_cpus: Annotated[Optional[int], typer.Option(min=1, help="CPUs of the local Ray (default: all)")] = None,
          json_path: JsonOpt = None) -> None:
    """Run a grid of trials (seeds x --set axes) of one flow, one trial per Ray worker (torch pinned to
    one thread each), and print one table: every trial, then mean / std over the seeds."""
    from ..sweep import grid, run_sweep, summarize

    fixed = given(model=model, dataset=dataset, method=method, schedule=schedule, rounds=rounds,
                  finetune_epochs=finetune_epochs, epochs=epochs)
    axes = {"seed": parse_seeds(seeds), **parse_axes(sets)}
    clash = sorted(set(axes) & set(fixed) - {"seed"})
    if clash:
        raise UserError(f"--set {clash[0]}=... clashes with the --{clash[0].replace('_', '-')} option; give one of them")
    trials = [{**fixed, **point} for point in grid(axes)]
    rows = run_sweep(flow, trials, backend=backend, address=address, num_cpus=num_cpus)
    shown = [{k: v for k, v in row.items() if k not in fixed} for row in rows]
    out.print(rows_table(shown, f"sweep {flow}: {len(rows)} trials"))
    summary = summarize(rows, [*fixed, *axes]) if len(axes["seed"]) > 1 else []
    if summary:
        out.print(rows_table([_mean_std(r, fixed) for r in summary], f"mean ± std over seeds {seeds}"))
    emit_json(json_path, {"flow": flow, "fixed": fixed, "axes": axes, "trials": rows, "summary": summary})
