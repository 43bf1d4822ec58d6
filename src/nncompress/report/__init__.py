"""Run reports: a folder with `report.md` (figures as PNG files in `figures/`) and one
self-contained `report.html` (the same tables, figures embedded as base64 PNG).

    from nncompress.report import capture_stage, write_report
    stages = [capture_stage("dense", model, in_shape, accuracy)]   # after each stage of a run
    stages.append(capture_file_stage("encoded", "model.nnc", accuracy))  # a stage that wrote a .nnc file
    ...
    md_path, html_path = write_report("runs/report", stages, title="LeNet-300-100 on digits")
"""
from __future__ import annotations

import os
from pathlib import Path

from ..analysis.plots import plot_sensitivity
from ..analysis.sensitivity import SensitivityCurves
from ..fileio import atomic_write_text, write_json
from .figures import plot_accuracy_vs_size, plot_energy, plot_weight_histograms
from .html import render_html
from .markdown import render_markdown
from .stages import StageRecord, capture_file_stage, capture_stage, file_options, nnc_storage
from .tables import summary_line

__all__ = ["StageRecord", "capture_file_stage", "capture_stage", "file_options", "nnc_storage", "summary_line",
           "write_report"]


def write_report(out_dir: str | os.PathLike, stages: list[StageRecord], *, title: str = "nncompress report",
                 sensitivity: SensitivityCurves | None = None, notes: list[str] = ()) -> tuple[Path, Path]:
    """Write `out_dir/report.md` (+ `figures/*.png`), `out_dir/report.html` (self-contained) and
    `out_dir/report.json` (the stage figures); returns (markdown path, html path).

    `stages`: in run order, the first being the reference (usually the dense model); `sensitivity`:
    per-layer pruning sensitivity curves, plotted when given; `notes`: lines shown under the summary.
    Every file is written atomically."""
    if not stages:
        raise ValueError("write_report needs at least one stage")
    out = Path(out_dir)
    figures_dir = out / "figures"
    figures_dir.mkdir(parents=True, exist_ok=True)
    figures: list[tuple[str, Path]] = []
    candidates = [("Accuracy vs size", plot_accuracy_vs_size(stages, figures_dir / "accuracy_vs_size.png")),
                  ("Energy per inference", plot_energy(stages, figures_dir / "energy.png")),
                  ("Weight distributions", plot_weight_histograms(stages, figures_dir / "weights.png"))]
    if sensitivity is not None:
        candidates.append(("Pruning sensitivity", plot_sensitivity(sensitivity, figures_dir / "sensitivity.png")))
    figures = [(caption, path) for caption, path in candidates if path is not None]
    md_path = atomic_write_text(out / "report.md", render_markdown(title, stages, figures, out, list(notes)))
    html_path = atomic_write_text(out / "report.html", render_html(title, stages, figures, list(notes)))
    write_json(out / "report.json", {"title": title, "summary": summary_line(stages),
                                     "stages": [s.as_dict() for s in stages]})
    return md_path, html_path
