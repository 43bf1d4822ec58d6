"""Plots written as PNG files (matplotlib, headless Agg backend), atomically."""
from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..fileio import atomic_write  # noqa: E402
from .sensitivity import SensitivityCurves  # noqa: E402


def plot_sensitivity(curves: SensitivityCurves, path: str | os.PathLike, title: str = "Per-layer pruning sensitivity") -> Path:
    """Accuracy vs sparsity, one line per layer (like Han et al. 2015 fig. 6)."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    xs = [100 * s for s in curves.sparsities]
    for name, accs in curves.accuracy.items():
        ax.plot(xs, [100 * a for a in accs], marker="o", markersize=3, label=name)
    ax.axhline(100 * curves.baseline, color="grey", linestyle="--", linewidth=0.8, label="dense")
    ax.set_xlabel("parameters pruned away (%)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    finally:
        plt.close(fig)


def plot_layer_error(errors: dict[str, dict[str, float]], path: str | os.PathLike, title: str) -> Path:
    """Output SQNR (dB) and cosine similarity per layer, input to output."""
    names = list(errors)
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    sqnr = [min(errors[n]["sqnr_db"], 99.0) for n in names]
    ax.bar(range(len(names)), sqnr, color="tab:blue", label="output SQNR (dB)")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("output SQNR (dB)")
    twin = ax.twinx()
    twin.plot(range(len(names)), [errors[n]["cosine"] for n in names], color="tab:red", marker="o", label="cosine")
    twin.set_ylabel("cosine similarity to float")
    ax.set_title(title)
    fig.tight_layout()
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    finally:
        plt.close(fig)
