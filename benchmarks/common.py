"""Shared helpers for benchmarks: the results header (command, versions, date) and markdown tables."""
from __future__ import annotations

import datetime
import json
import platform
import shlex
import statistics
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from nncompress.fileio import atomic_write_text

RESULTS = Path(__file__).resolve().parent / "results"
MNIST_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


def header(title: str) -> str:
    """Title, the exact command, versions and date, as every results file starts."""
    command = "python " + " ".join(shlex.quote(a) for a in [f"benchmarks/{Path(sys.argv[0]).name}", *sys.argv[1:]])
    versions = f"torch {torch.__version__}, numpy {np.__version__}, Python {platform.python_version()}"
    try:
        import onnxruntime
        versions += f", onnxruntime {onnxruntime.__version__}"
    except ImportError:
        pass
    return (f"# {title}\n\nCommand: `{command}`  \nVersions: {versions}  \n"
            f"Machine: {platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}  \n"
            f"Date: {datetime.date.today().isoformat()}\n")


def table(columns: list[str], rows: list[list[object]]) -> str:
    """A GitHub markdown table."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 10 else f"{value:.1f}"
    return str(value)


def write_results(name: str, text: str) -> Path:
    """Write benchmarks/results/<name>.md atomically and echo it."""
    path = atomic_write_text(RESULTS / f"{name}.md", text)
    print(text)
    print(f"wrote {path}")
    return path


def median_min_max(values: list[float]) -> tuple[float, float, float]:
    return statistics.median(values), min(values), max(values)


def interleaved_ratio(baseline, candidate, *, rounds: int = 15, warmup: int = 3, inner: int = 1) -> dict:
    """Time `baseline()` and `candidate()` in turns (A B A B ...) after warm-up; report the median of
    the per-round speed-ups baseline_time / candidate_time with min and max, and median times."""
    import time

    for _ in range(warmup):
        baseline()
        candidate()
    ratios, t_base, t_cand = [], [], []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(inner):
            baseline()
        mid = time.perf_counter()
        for _ in range(inner):
            candidate()
        end = time.perf_counter()
        t_base.append((mid - start) / inner)
        t_cand.append((end - mid) / inner)
        ratios.append(t_base[-1] / t_cand[-1])
    med, lo, hi = median_min_max(ratios)
    return {"speedup": med, "min": lo, "max": hi, "base_ms": 1e3 * statistics.median(t_base),
            "cand_ms": 1e3 * statistics.median(t_cand)}


FLOAT_CACHE = Path(__file__).resolve().parents[1] / "runs" / "float_models"


def trained_float(arch: str, data, seed: int, epochs: int):
    """The zoo model `arch` trained with its recipe for `epochs` epochs on `data` (seed `seed`), cached
    as safetensors under runs/float_models/ so that benchmarks sharing a float model (QAT, binary)
    train it once. The file name holds the dataset, seed and epochs; the file's metadata holds the
    whole training config, and a file trained with another config (a changed recipe) is retrained.
    Benchmarks running in parallel share the cache: the first to need a model trains it while
    the others wait on a lock file beside it, then load it.
    Returns (model, seconds spent training, 0 when cached)."""
    import fcntl
    import time

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from nncompress.api import training_config
    from nncompress.fileio import atomic_write
    from nncompress.train import fit
    from nncompress.zoo import build_model

    config = training_config(arch, epochs=epochs, seed=seed)
    torch.manual_seed(seed)
    model = build_model(arch, data.in_shape, data.num_classes)
    path = FLOAT_CACHE / f"{arch}-{data.name}-seed{seed}-{epochs}ep.safetensors"
    FLOAT_CACHE.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if path.is_file():
            with safe_open(str(path), "pt") as f:
                cached_config = (f.metadata() or {}).get("config")
            if cached_config == repr(config):
                model.load_state_dict(load_file(str(path)))
                return model.eval(), 0.0
        began = time.perf_counter()
        fit(model, data.train_loader(64, seed=seed), config, progress=False, log=lambda _m: None)
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        atomic_write(path, lambda tmp: save_file(state, tmp, metadata={"config": repr(config)}))
        return model.eval(), time.perf_counter() - began


def accuracies(model, val, test) -> dict:
    """{"val": accuracy on the validation split, "test": on the test split} (val and test: Datasets)."""
    from nncompress.train import evaluate

    return {"val": evaluate(model, val.test_loader())["accuracy"], "test": evaluate(model, test.test_loader())["accuracy"]}


def mean_se(values: list[float]) -> tuple[float, float]:
    """Mean and standard error of the mean (NaN for one value)."""
    se = statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else float("nan")
    return statistics.mean(values), se


def cached_sweep(path: Path, values: list[float], run: Callable[[list[float]], dict]) -> dict:
    """One seed's results of a sweep, cached as JSON in `path`: its "rows" are keyed by each swept
    value ("{v:g}"); `run(missing)` computes the seed's result for the values the cache lacks, and
    its rows are merged into the cached ones."""
    done = json.loads(path.read_text()) if path.is_file() else None
    missing = [v for v in values if not done or f"{v:g}" not in done["rows"]]
    if missing:
        result = run(missing)
        latest = json.loads(path.read_text()) if path.is_file() else None  # rows another process added meanwhile
        if latest:
            result["rows"] = {**latest["rows"], **result["rows"]}
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps(result, indent=1))
        done = result
    return done


def gap_cells(gaps: list[float]) -> list[str]:
    """The table cells of per-seed accuracy gaps (points): "**mean** ± se" and the worst seed."""
    mean, se = mean_se(gaps)
    return [f"**{mean:+.2f}**" + ("" if se != se else f" ± {se:.2f}"), f"{min(gaps):+.2f}"]


def sweep_cells(runs: list[dict], key: str) -> tuple[list[dict], list[str], list[str]]:
    """One swept value's rows across seeds (each seed's `rows[key]`, with the seed's "control",
    "fp32_bytes" beside them) and the table cells every sweep shares: before the method's own columns
    the mean file bytes and compression; after them val %, val gap, test %, control test %, the gap
    cells and whether every decode was exact."""
    rows = [r["rows"][key] for r in runs]
    gap = [100 * (x["test"] - r["control"]["test"]) for x, r in zip(rows, runs)]
    val_gap = [100 * (x["val"] - r["control"]["val"]) for x, r in zip(rows, runs)]
    ratio = [r["fp32_bytes"] / x["bytes"] for x, r in zip(rows, runs)]
    head = [f"{statistics.mean(x['bytes'] for x in rows):,.0f}", f"{statistics.mean(ratio):.1f}x"]
    tail = [f"{100 * statistics.mean(x['val'] for x in rows):.2f}", f"{statistics.mean(val_gap):+.2f}",
            f"{100 * statistics.mean(x['test'] for x in rows):.2f}",
            f"{100 * statistics.mean(r['control']['test'] for r in runs):.2f}",
            *gap_cells(gap), "yes" if all(x["exact"] for x in rows) else "NO"]
    return rows, head, tail


def sweep_points(runs: list[dict], values: list[float], label: Callable[[float], str]) -> list[dict]:
    """The rate-accuracy points of frontier.py's plot for a cached sweep: per swept value, its `label`,
    the mean compression, test accuracy (%) and control test accuracy (%) over the seeds."""
    out = []
    for value in values:
        rows = [r["rows"][f"{value:g}"] for r in runs]
        out.append({"label": label(value), "test": 100 * statistics.mean(x["test"] for x in rows),
                    "ratio": statistics.mean(r["fp32_bytes"] / x["bytes"] for x, r in zip(rows, runs)),
                    "control": 100 * statistics.mean(r["control"]["test"] for r in runs)})
    return out
