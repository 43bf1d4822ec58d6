"""The report's figures as PNG files (matplotlib, headless Agg backend), written atomically:
weight distributions per stage (like the lectures' "weight distribution before / after pruning" and
Han et al. 2016 fig. 4 for the shared weights), accuracy vs size of the stages, and the energy of
each stage split into compute, weight memory and activation memory (45 nm table, Horowitz 2014).
Sensitivity curves reuse `analysis.plots.plot_sensitivity`."""
from __future__ import annotations

import math
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..fileio import atomic_write  # noqa: E402
from .stages import StageRecord  # noqa: E402

#: the histograms show at most this many layers (the largest ones)
MAX_HISTOGRAM_LAYERS = 4


def _save(fig, path: str | os.PathLike) -> Path:
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", metadata={"Software": None}))
    finally:
        plt.close(fig)


def plot_weight_histograms(stages: list[StageRecord], path: str | os.PathLike, bins: int = 80) -> Path | None:
    """One row per layer (the largest `MAX_HISTOGRAM_LAYERS`), one column per stage that kept its
    weights: the distribution of the non-zero weights the model computes with. Pruning opens a gap
    around zero; weight sharing turns the distribution into one spike per centroid. None when no
    stage kept weights."""
    with_weights = [s for s in stages if s.weights]
    if not with_weights:
        return None
    sizes: dict[str, int] = {}
    for stage in with_weights:
        for name, values in stage.weights.items():
            sizes[name] = max(sizes.get(name, 0), len(values))
    layers = sorted(sizes, key=lambda n: -sizes[n])[:MAX_HISTOGRAM_LAYERS]
    fig, axes = plt.subplots(len(layers), len(with_weights), figsize=(2.6 * len(with_weights) + 0.6, 1.9 * len(layers) + 0.6),
                             dpi=110, squeeze=False)
    for row, layer in enumerate(layers):
        for col, stage in enumerate(with_weights):
            ax = axes[row][col]
            values = stage.weights.get(layer)
            if values is not None and len(values):
                ax.hist(values, bins=bins, color="tab:blue", histtype="stepfilled")  # one polygon: fast
            ax.tick_params(labelsize=6)
            if row == 0:
                ax.set_title(stage.name, fontsize=9)
            if col == 0:
                ax.set_ylabel(f"{layer}\ncount", fontsize=8)
            if row == len(layers) - 1:
                ax.set_xlabel("weight value (non-zero)", fontsize=7)
    fig.suptitle("Weight distribution per stage", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def plot_accuracy_vs_size(stages: list[StageRecord], path: str | os.PathLike) -> Path | None:
    """Test accuracy (%) against size (KB, log scale), one point per measured stage, in order."""
    points = [(s.size_bytes / 1000, 100 * s.accuracy, s.name) for s in stages if s.accuracy is not None]
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(6.0, 4.0), dpi=110)
    ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", color="tab:blue")
    labels: dict[tuple[float, float], list[str]] = {}  # stages at the same point share one label
    for size, acc, name in points:
        labels.setdefault((round(math.log10(size), 2), round(acc, 2)), []).append(name)
    for (log_size, acc), names in labels.items():
        ax.annotate(" / ".join(names), (10 ** log_size, acc), textcoords="offset points", xytext=(4, 6), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("size (KB, log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Accuracy vs size of each stage")
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    return _save(fig, path)


def plot_energy(stages: list[StageRecord], path: str | os.PathLike) -> Path:
    """Energy per inference (nJ, log scale) of each stage: compute, weight memory, activation memory."""
    parts = (("compute_pj", "compute", "tab:green"), ("weight_memory_pj", "weight memory", "tab:red"),
             ("act_memory_pj", "activation memory", "tab:orange"))
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    width = 0.8 / len(parts)
    for i, (key, label, color) in enumerate(parts):
        xs = [j + (i - 1) * width for j in range(len(stages))]
        ax.bar(xs, [max(s.energy.get(key, 0.0), 1e-3) / 1000 for s in stages], width, label=label, color=color)
    ax.set_xticks(range(len(stages)), [s.name for s in stages], fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("energy per inference (nJ, log scale)")
    ax.set_title("Energy estimate (45 nm, Horowitz ISSCC 2014)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y", which="both")
    fig.tight_layout()
    return _save(fig, path)
