"""`nncompress run RECIPE.yaml`: a YAML pipeline of stages, validated before anything runs,
checkpointed after each stage, resumable with --resume (recipes/ in the repository: one per README
headline row)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from ..zoo import load_dataset
from .common import DataDirOpt, DownloadOpt, JsonOpt, app, console, emit_json, out


@app.command("run")
def run_cmd(recipe: Annotated[Path, typer.Argument(help="a YAML recipe (see recipes/ in the repository)")],
            dataset: Annotated[Optional[str], typer.Option("--dataset", "-d", help="override the recipe's dataset")] = None,
            data_dir: DataDirOpt = None, download: DownloadOpt = False,
            out_dir: Annotated[Optional[Path], typer.Option("--out", "-o", help="run folder: checkpoints, result.json, "
                                                            "written files (default runs/<recipe name>)")] = None,
            seed: Annotated[Optional[int], typer.Option(help="override the recipe's seed")] = None,
            resume: Annotated[bool, typer.Option(help="continue after the last finished stage's checkpoint in --out")] = False,
            json_path: JsonOpt = None) -> None:
    """Run a recipe: train, prune, quantize, fine-tune, convert, allocate, encode, export, evaluate."""
    from ..recipes import load_recipe, run_recipe

    parsed = load_recipe(recipe)  # every check that needs no model, before loading any data
    data = load_dataset(dataset or parsed.header.dataset, data_dir, download=download)
    folder = out_dir if out_dir is not None else Path("runs") / parsed.name
    result = run_recipe(parsed, data, folder, seed=seed, resume=resume, log=lambda msg: console.print(msg, highlight=False))
    out.print(stage_table(result, folder))
    for i, row in enumerate(result["stages"]):
        if "warning" in row:
            out.print(f"WARNING (stage {i + 1}, {row['stage']}): {row['warning']}")
    if "report_html" in result:
        out.print(f"report: {result['report_html']} (and {result['report_md']})")
    emit_json(json_path, result)


def stage_table(result: dict, folder: Path) -> Table:
    """One row per stage: test accuracy and the figures that stage measured."""
    table = Table(title=f"{result['recipe']}: {result['model']} on {result['dataset']}, seed {result['seed']} ({folder})",
                  caption="compression: fp32 parameter bytes / .nnc file bytes; 'nz': all weights / non-zero weights "
                          "(no .nnc file written for this state of the model)")
    for col in ("stage", "test acc", "vs dense", "weights kept", "bytes", "compression", "notes"):
        table.add_column(col, justify="left" if col in ("stage", "notes") else "right")
    dense = result["summary"].get("dense_accuracy")
    file_compression = None  # the encode stage's: the stages after it keep the model the .nnc file holds
    for i, row in enumerate(result["stages"]):
        file_compression = row.get("compression", file_compression)
        shown = None if "file_bytes" in row and "compression" not in row else file_compression  # (an ONNX file)
        acc = row.get("test_accuracy")
        notes = []
        if "method" in row:
            notes.append(row["method"]["method"])
        if "control_accuracy" in row:
            notes.append(f"control {100 * row['control_accuracy']:.2f} ({100 * row['gap_vs_control']:+.2f})")
        if "warning" in row:
            notes.append("WARNING (below)")
        if row.get("budget_bytes"):
            notes.append(f"budget {row['budget_bytes']:,} B")
        if "exact_roundtrip" in row:
            notes.append(f"exact round trip: {row['exact_roundtrip']}")
        table.add_row(f"{i + 1}. {row['stage']}", f"{100 * acc:.2f}" if acc is not None else "",
                      f"{100 * (acc - dense):+.2f}" if acc is not None and dense is not None else "",
                      f"{1 / row['weight_compression']:.1%}" if "weight_compression" in row else "",
                      f"{row['file_bytes']:,}" if "file_bytes" in row else "",
                      f"{shown:.1f}x" if shown is not None else
                      f"{row['weight_compression']:.1f}x nz" if "weight_compression" in row else "",
                      ", ".join(notes))
    return table
