"""Stage checkpoints of a recipe run: after stage N, `OUT/checkpoints/NN-<kind>.safetensors` (the
model, written by `api.save_model` with the methods applied so far as its recipe: safetensors, no
pickle) and then `NN-<kind>.json` (the run's state and every stage's figures so far). The JSON is
written last and atomically, so it marks a complete checkpoint; `--resume` continues after the last
one whose fingerprint (recipe, dataset, seed) matches. After an `encode` or `allocate` stage the model is
the one decoded from the .nnc file, which is then the checkpoint's model.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict
from pathlib import Path

from torch import nn

from ..api import load_model, save_model
from ..encode.container import read_nnc
from ..encode.model import decode_model
from ..fileio import loads_bounded, write_json
from ..flows.control import TrainingPhase
from ..methods import method_from_dict
from ..train import TrainConfig
from ..validate import UserError
from .stages import Run

FORMAT = "nncompress-run/1"
_NAME = re.compile(r"(\d{2})-([a-z]+)\.(json|safetensors)")
MAX_CHECKPOINT_JSON = 64 << 20


def fingerprint(recipe_data: dict, dataset_name: str, n_train: int, n_test: int, seed: int) -> str:
    """What a checkpoint must match to be resumed: the recipe as validated, the data and the seed."""
    text = json.dumps({"recipe": recipe_data, "dataset": dataset_name, "n_train": n_train, "n_test": n_test,
                       "seed": seed}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def folder(out: Path) -> Path:
    return out / "checkpoints"


def clear(out: Path) -> None:
    """Remove this run folder's stage checkpoints (a fresh run must not resume someone else's)."""
    if folder(out).is_dir():
        for path in folder(out).iterdir():
            if _NAME.fullmatch(path.name):
                path.unlink()


def save(run: Run, index: int, kind: str, fp: str, results: list[dict]) -> Path:
    """Write stage `index`'s checkpoint (model first, then the JSON that marks it complete)."""
    stem = folder(run.out) / f"{index:02d}-{kind}"
    model_file = None
    if run.nnc is None:
        model_file = stem.with_suffix(".safetensors")
        save_model(run.model, model_file, recipe=run.methods, fold_batchnorm=run.fold_batchnorm, arch=run.arch,
                   in_shape=run.dataset.in_shape, num_classes=run.dataset.num_classes)
        if kind == "train":
            run.dense_checkpoint = str(model_file.resolve())
    state = {"format": FORMAT, "fingerprint": fp, "stage": index, "kind": kind,
             "model_file": model_file.name if model_file else None, "nnc": _inside(run.nnc, run.out), "results": results,
             "run": {"base": asdict(run.base), "methods": [m.to_dict() for m in run.methods],
                     "fold_batchnorm": run.fold_batchnorm, "dense_accuracy": run.dense_accuracy,
                     "dense_checkpoint": _inside(run.dense_checkpoint, run.out), "dense_bytes": run.dense_bytes,
                     "phases": [_phase_dict(p) for p in run.phases], "control_distill": run.control_distill,
                     "dropout": dropout_rates(run.model)}}
    return write_json(stem.with_suffix(".json"), state)


def latest(out: Path, fp: str) -> dict | None:
    """The last complete checkpoint of the run `fp` in `out` (None when there is none); a checkpoint
    of another recipe / dataset / seed is a UserError (resume it with its own recipe or use another --out)."""
    if not folder(out).is_dir():
        return None
    found = sorted((p for p in folder(out).glob("*.json") if _NAME.fullmatch(p.name)), reverse=True)
    for path in found:
        if path.stat().st_size > MAX_CHECKPOINT_JSON:
            raise UserError(f"checkpoint {str(path)!r} is larger than {MAX_CHECKPOINT_JSON} bytes")
        state = loads_bounded(path.read_bytes(), f"checkpoint {str(path)!r}")
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise UserError(f"{str(path)!r} is not a recipe-run checkpoint ({FORMAT})")
        if state.get("fingerprint") != fp:
            raise UserError(f"{str(path)!r} was written by another recipe, dataset or seed: resume with the same ones, "
                            "or run without --resume (which starts over) or with another --out")
        state["path"] = str(path)
        return state
    return None


def restore(state: dict, run: Run) -> list[dict]:
    """Put a checkpoint's model and state into `run`; returns the figures of the finished stages."""
    saved = state["run"]
    if state.get("nnc"):
        run.nnc = str(run.out / state["nnc"])  # relative: inside this run folder (a copied folder resumes its own file)
        run.model = decode_model(read_nnc(run.nnc)).eval()
    else:
        run.model, _ = load_model(Path(state["path"]).with_name(state["model_file"]))
    set_dropout_rates(run.model, saved["dropout"])
    run.base = TrainConfig(**saved["base"])
    run.methods = [method_from_dict(spec) for spec in saved["methods"]]
    run.fold_batchnorm = bool(saved["fold_batchnorm"])
    run.dense_accuracy = saved["dense_accuracy"]
    run.dense_checkpoint = str(run.out / saved["dense_checkpoint"]) if saved["dense_checkpoint"] else None
    run.dense_bytes = int(saved["dense_bytes"])
    run.phases = [_phase(p) for p in saved["phases"]]
    run.control_distill = saved.get("control_distill")
    return list(state["results"])


def _inside(path: str | None, out: Path) -> str | None:
    """`path` relative to the run folder when it is inside it (else as it is)."""
    if path is None:
        return None
    try:
        return str(Path(path).resolve().relative_to(out.resolve()))
    except ValueError:
        return path


def load_dense(path: str) -> nn.Module:
    """The dense model a train stage checkpointed (the same-budget control starts from it)."""
    return load_model(path)[0]


def dropout_rates(model: nn.Module) -> dict[str, float]:
    """Dropout rates are module attributes, not state: pruning rescales them, so checkpoints keep them."""
    return {name: m.p for name, m in model.named_modules() if isinstance(m, nn.Dropout)}


def set_dropout_rates(model: nn.Module, rates: dict[str, float]) -> None:
    modules = dict(model.named_modules())
    for name, p in rates.items():
        if isinstance(modules.get(name), nn.Dropout):
            modules[name].p = float(p)


def _phase_dict(phase: TrainingPhase) -> dict:
    return {"config": asdict(phase.config), "loader_seed": phase.loader_seed, "batch_size": phase.batch_size,
            "label": phase.label}


def _phase(data: dict) -> TrainingPhase:
    return TrainingPhase(TrainConfig(**data["config"]), int(data["loader_seed"]), int(data["batch_size"]),
                         str(data["label"]))
