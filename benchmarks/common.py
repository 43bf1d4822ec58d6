"""Shared helpers for benchmarks: the results header (command, versions, date) and markdown tables."""
from __future__ import annotations

import datetime
import platform
import shlex
import statistics
import sys
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
