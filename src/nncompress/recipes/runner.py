"""Run a validated recipe: check every layer name against the model before any training, then run
the stages in order, checkpointing after each; `resume=True` continues after the last checkpoint.

Determinism: the model is built under `torch.manual_seed(seed)`, every stage starts from
`torch.manual_seed(stage_seed(seed, i))`, and every training phase seeds itself and its loader
(train.fit), so an interrupted and resumed run gives exactly the figures of an uninterrupted one.
"""
from __future__ import annotations

import dataclasses
import json
import re
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from ..analysis.metrics import count_params
from ..api import resolve_model, training_config
from ..config import per_layer, pattern_matches
from ..fileio import loads_bounded, write_json
from ..parametrize import CompositionError
from ..report import capture_stage, file_options, write_report
from ..validate import UserError
from ..zoo import Dataset
from . import checkpoint
from .schema import MethodStage, Recipe
from .stages import Run, run_stage

#: the figures `summary` keeps, the latest stage's value of each
SUMMARY_KEYS = ("test_accuracy", "nonzero_weights", "total_weights", "weight_compression", "densities",
                "compression", "exact_roundtrip", "state_dict_bytes", "ratio_vs_float32", "control_accuracy",
                "gap_vs_control")


def stage_seed(seed: int, index: int) -> int:
    """The global torch seed stage `index` starts from (anything a stage draws unseeded is repeatable)."""
    return seed * 1009 + 7919 * (index + 1)


def check_layers(recipe: Recipe, model: nn.Module) -> None:
    """Every layer a method names (targets include / exclude, keys of per-layer maps such as
    layer_sparsity / layer_bits) must be a layer of the model; a name or pattern matching no targeted
    layer is an error naming the recipe line and the layers; so is a prune stage on a layer an earlier
    quantize stage quantized. Runs on the fresh model, before training."""
    quantized: dict[str, MethodStage] = {}  # layer -> the quantize stage that quantized it
    for stage in recipe.stages:
        if not isinstance(stage, MethodStage):
            continue
        method = stage.build_method()
        try:
            layers = method.targets.layers(model)
        except UserError as err:
            raise UserError(f"{stage.where('targets')}: {err}") from None
        if not layers:
            raise UserError(f"{stage.where('targets')}: method {method.name!r} selects no layer of the model "
                            f"({method.targets})")
        done = next((name for name in layers if name in quantized), None)
        if stage.kind == "prune" and done is not None:
            raise UserError(f"{stage.where('method')}: layer {done!r} is quantized by the quantize stage before it "
                            f"({quantized[done].where()}): prune before quantizing (the quantizer must see the "
                            "pruned weights), or leave the layer out with targets: {exclude: [...]}")
        if stage.kind == "quantize":
            quantized.update(dict.fromkeys(layers, stage))
        for f in dataclasses.fields(method):
            value = getattr(method, f.name)
            if not (isinstance(value, dict) and value):
                continue
            try:
                per_layer(value, layers, None, f.name)
            except UserError as err:
                raise UserError(f"{stage.where(f.name)}: {err}") from None
            for key in value:
                if not any(pattern_matches(key, name, layer) for name, layer in layers.items()):
                    raise UserError(f"{stage.where(f.name)}: {f.name} key {key!r} matches none of the targeted "
                                    f"layers: {', '.join(layers)} (keys: a name, 're:<regex>' or 'type:<Class>')")


def prepare(recipe: Recipe, dataset: Dataset, out: str | Path, seed: int | None = None) -> Run:
    """The run before its first stage: the model built under `torch.manual_seed(seed)` (or loaded),
    every layer name of the recipe checked against it (before any training)."""
    seed = recipe.header.seed if seed is None else seed
    torch.manual_seed(seed)
    model, arch, trained = resolve_model(recipe.header.model, dataset, seed=seed)
    check_layers(recipe, model)
    run = Run(name=recipe.name, model=model, arch=arch, dataset=dataset, seed=seed, out=Path(out),
              base=training_config(arch, seed=seed), dense_bytes=4 * count_params(model),
              load_dense=checkpoint.load_dense)
    if trained:
        run.dense_accuracy = run.accuracy()
    return run


def execute(recipe: Recipe, run: Run, index: int) -> dict:
    """Run stage `index` of `recipe` on `run` from its own seed; returns its figures as plain JSON data
    (benchmarks that branch one pruned model into several quantized ones call this per stage)."""
    stage = recipe.stages[index]
    torch.manual_seed(stage_seed(run.seed, index))
    try:
        figures = run_stage(stage, run, index)
    except CompositionError as err:  # what a layer cannot take: say which stage, in recipe terms
        reason = re.split(r"[.;,]? [Cc]all nc\.remove_quantization_", str(err))
        advice = (". In a recipe a layer takes one quantizer: leave it out of one of the stages with "
                  "targets: {exclude: [...]}") if len(reason) > 1 else ""
        raise CompositionError(f"{stage.where()}: {reason[0]}{advice}") from None
    return json.loads(json.dumps({"stage": stage.kind, **figures}))  # as result.json holds it


def run_recipe(recipe: Recipe, dataset: Dataset, out: str | Path, *, seed: int | None = None, resume: bool = False,
               log: Callable[[str], None] = print, stop_after: int | None = None) -> dict:
    """Run `recipe` on `dataset`, writing checkpoints and result.json under `out`; returns the result:
    {"recipe", "model", "dataset", "seed", "stages": [figures per stage], "summary": {...}, "seconds",
    "report_md", "report_html"}; the report (`out/report/report.md` and a self-contained report.html)
    has one row per stage run in this process: accuracy, size, MACs, BOPs, energy, weight histograms.
    `stop_after`: stop once that many stages have finished (tests interrupt runs with it)."""
    out = Path(out)
    run = prepare(recipe, dataset, out, seed)
    fp = checkpoint.fingerprint(recipe.data(), dataset.name, len(dataset.train_y), len(dataset.test_y), run.seed)
    results: list[dict] = []
    state = checkpoint.latest(out, fp) if resume else None
    if state is not None:
        results = checkpoint.restore(state, run)
        finished = finished_result(out, results) if len(results) == len(recipe.stages) else None
        if finished is not None:
            log(f"{recipe.name} is complete in {out}: nothing to resume (its result.json is kept)")
            return finished
        log(f"resuming {recipe.name} after stage {state['stage'] + 1} ({state['kind']}) from {state['path']}")
    elif not resume:
        checkpoint.clear(out)
    seconds: dict[str, float] = {}
    records = [capture_stage("0. start", run.model, dataset.in_shape, run.dense_accuracy)] if not results else []
    for index in range(len(results), len(recipe.stages)):
        if stop_after is not None and index >= stop_after:
            break
        stage = recipe.stages[index]
        log(f"[{index + 1}/{len(recipe.stages)}] {stage.kind} ({stage.where()})")
        began = time.perf_counter()
        results.append(execute(recipe, run, index))
        seconds[f"{index:02d}-{stage.kind}"] = time.perf_counter() - began
        checkpoint.save(run, index, stage.kind, fp, results)
        records.append(capture_stage(f"{index + 1}. {stage.kind}", run.model, dataset.in_shape,
                                     results[-1].get("test_accuracy"), **(file_options(run.nnc) if run.nnc else {})))
        log(f"    {stage.kind}: " + _short(results[-1]))
    result = {"recipe": recipe.name, "model": run.arch, "dataset": dataset.name, "seed": run.seed, "stages": results,
              "summary": summary(results, run.dense_accuracy), "complete": len(results) == len(recipe.stages),
              "resumed_after_stage": state["stage"] + 1 if state else None, "seconds": seconds}
    if records:
        notes = [f"resumed after stage {state['stage'] + 1}: earlier stages are in result.json only"] if state else []
        notes += stage_notes(results)
        md_path, html_path = write_report(out / "report", records, title=f"{recipe.name}: {run.arch} on {dataset.name}",
                                          notes=notes)
        result.update({"report_md": str(md_path), "report_html": str(html_path)})
    write_json(out / "result.json", result)
    return result


def summary(results: list[dict], dense_accuracy: float | None) -> dict:
    """The headline figures: dense accuracy, the last test accuracy and the gap, and the latest value
    of each of SUMMARY_KEYS."""
    merged: dict = {}
    for figures in results:
        merged.update({k: figures[k] for k in SUMMARY_KEYS if k in figures})
        if "compression" in figures:  # the .nnc file's bytes, beside its compression (not an ONNX export's)
            merged["file_bytes"] = figures["file_bytes"]
    if dense_accuracy is not None:
        merged["dense_accuracy"] = dense_accuracy
        if "test_accuracy" in merged:
            merged["gap"] = merged["test_accuracy"] - dense_accuracy
    return merged


def finished_result(out: Path, results: list[dict]) -> dict | None:
    """The result.json a finished run wrote (with its timings and report paths), if its stages are these."""
    path = out / "result.json"
    if not path.is_file():
        return None
    try:
        previous = loads_bounded(path.read_bytes(), f"{str(path)!r}")
    except UserError:  # unreadable: the resume writes a new one
        return None
    return previous if isinstance(previous, dict) and previous.get("stages") == results else None


def stage_notes(results: list[dict]) -> list[str]:
    """The report's lines under its headline: every stage's warning and the same-budget control's accuracy."""
    notes = []
    for i, figures in enumerate(results):
        where = f"stage {i + 1} ({figures['stage']})"
        if "warning" in figures:
            notes.append(f"WARNING, {where}: {figures['warning']}")
        if "control_accuracy" in figures:
            distilled = ", distilling the same teacher" if figures.get("control_distill") else ""
            notes.append(f"{where}: the same-budget dense control (trained through the same phases{distilled}, "
                         f"nothing compressed) reaches {figures['control_accuracy']:.4f}; the model is "
                         f"{100 * figures['gap_vs_control']:+.2f} points from it")
    return notes


def _short(figures: dict) -> str:
    parts = []
    for key in ("test_accuracy", "before_finetune_accuracy", "trained_accuracy", "weight_compression", "compression",
                "file_bytes", "budget_bytes", "control_accuracy", "exact_roundtrip"):
        if key in figures and figures[key] is not None:
            value = figures[key]
            parts.append(f"{key} {value:.4f}" if isinstance(value, float) and "accuracy" in key else
                         f"weights kept {1 / value:.1%}" if key == "weight_compression" else
                         f"{key} {value:.1f}x" if "compression" in key else f"{key} {value}")
    if "warning" in figures:
        parts.append(f"WARNING: {figures['warning']}")
    return "  ".join(parts)
