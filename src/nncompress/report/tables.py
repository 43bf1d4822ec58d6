"""The report's tables as (headers, rows of strings), rendered by `markdown.py` and `html.py` alike,
and the one-line summary of a run."""
from __future__ import annotations

from .stages import StageRecord

Table = tuple[list[str], list[list[str]]]


def format_bytes(n: float) -> str:
    """202440 -> '202 KB', 7300 -> '7.3 KB', 512 -> '512 B' (decimal units)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            value = n / scale
            return f"{value:.3g} {unit}" if value < 100 else f"{value:.0f} {unit}"
    return f"{n:.0f} B"


def format_energy(pj: float) -> str:
    """pJ with a readable unit: 1234567 -> '1.23 uJ'."""
    for unit, scale in (("mJ", 1e9), ("uJ", 1e6), ("nJ", 1e3)):
        if abs(pj) >= scale:
            return f"{pj / scale:.3g} {unit}"
    return f"{pj:.3g} pJ"


def _accuracy(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def summary_line(stages: list[StageRecord]) -> str:
    """'accuracy 0.986 -> 0.994, 202 KB -> 7.3 KB (27.7x)': the first measured accuracy (a run that
    trains first starts untrained, unmeasured) and the first stage's size vs the last stage's."""
    if not stages:
        return "no stages"
    first, last = stages[0], stages[-1]
    measured = next((s.accuracy for s in stages if s.accuracy is not None), None)
    ratio = first.size_bytes / last.size_bytes if last.size_bytes else float("inf")
    return (f"accuracy {_accuracy(measured)} -> {_accuracy(last.accuracy)}, "
            f"{format_bytes(first.size_bytes)} -> {format_bytes(last.size_bytes)} ({ratio:.1f}x)")


#: how to read the stage table (printed under it in report.md and report.html)
STAGE_LEGEND = ("size: the written .nnc file where a stage wrote or kept one, else an estimate (est.) from each "
                "layer's bits and non-zeros; compression vs first: the first stage's size / this stage's; MACs run: "
                "the multiply-accumulates a zero-skipping engine runs (non-zero weights only); BOPs: dense MACs x "
                "weight bits x activation bits (sparsity not counted); energy: the 45 nm estimate of "
                "hardware/energy.py. Where a file was written, a layer's size in its table includes its share "
                "of the header.")


def stage_table(stages: list[StageRecord]) -> Table:
    """One row per stage: accuracy, size (measured or estimated), compression vs the first stage,
    non-zero weights, MACs run, BOPs, energy split."""
    headers = ["stage", "accuracy", "size", "compression vs first", "non-zero weights", "MACs run", "BOPs",
               "compute", "weight memory", "act. memory", "energy"]
    rows = []
    base = stages[0].size_bytes if stages else 0
    for s in stages:
        size = format_bytes(s.size_bytes) + ("" if s.size_measured else " (est.)")
        rows.append([s.name, _accuracy(s.accuracy), size, f"{base / s.size_bytes:.1f}x" if s.size_bytes else "-",
                     f"{sum(r['nonzero'] for r in s.layers):,}", f"{s.energy.get('effective_macs', 0):,.0f}",
                     f"{s.energy.get('bops', 0):,.0f}", format_energy(s.energy.get("compute_pj", 0)),
                     format_energy(s.energy.get("weight_memory_pj", 0)), format_energy(s.energy.get("act_memory_pj", 0)),
                     format_energy(s.energy.get("total_pj", 0))])
    return headers, rows


def layer_table(stage: StageRecord) -> Table:
    """Per-layer figures of one stage."""
    headers = ["layer", "type", "params", "non-zeros", "bits (w/a)", "arithmetic", "size", "weights in", "MACs",
               "MACs run", "BOPs", "compute", "memory", "energy"]
    rows = [[r["layer"], r["kind"], f"{r['params']:,}", f"{r['nonzero']:,}", f"{r['weight_bits']}/{r['act_bits']}",
             r["arithmetic"], format_bytes(r["bytes"]), r["weights_in"], f"{r['macs']:,}", f"{r['effective_macs']:,.0f}",
             f"{r['bops']:,}", format_energy(r["compute_pj"]), format_energy(r["memory_pj"]), format_energy(r["total_pj"])]
            for r in stage.layers]
    return headers, rows
