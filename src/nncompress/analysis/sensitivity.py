"""Per-layer sensitivity analysis ("Per-layer sensitivity" in Yoo, "Compressing Neural Networks: Pruning and
Quantization", SNU 2023: conv1 near the input is the most sensitive, FC layers much less; Han et al., NeurIPS
2015, fig. 6: accuracy vs. the fraction of one layer's weights pruned, the others dense).

Each layer is compressed alone at a range of strengths, without retraining, and the model is
evaluated. Analysis changes nothing: the caller supplies how to compress one layer (`apply_one`),
and every point runs on a fresh copy of the model.
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import nn

DEFAULT_SPARSITIES = tuple(round(0.05 * i, 2) for i in range(20))  # 0.00 .. 0.95


@dataclass
class SensitivityCurves:
    """accuracy[layer][i] is the accuracy with only `layer` pruned to `sparsities[i]`."""

    sparsities: tuple[float, ...]
    baseline: float
    accuracy: dict[str, list[float]]

    def most_sensitive(self) -> str:
        """The layer whose accuracy, averaged over the sweep, drops most."""
        return min(self.accuracy, key=lambda name: sum(self.accuracy[name]))

    def targets_for_budget(self, max_drop: float) -> dict[str, float]:
        """Per layer, the highest sparsity whose accuracy stays within `max_drop` of the baseline
        (before the first point that falls below), as per-layer pruning targets."""
        targets = {}
        for name, accs in self.accuracy.items():
            best = 0.0
            for sparsity, acc in zip(self.sparsities, accs):
                if self.baseline - acc > max_drop:
                    break
                best = sparsity
            targets[name] = best
        return targets

    def as_rows(self) -> list[list[object]]:
        return [[name, *(f"{100 * a:.2f}" for a in accs)] for name, accs in self.accuracy.items()]


def sensitivity_scan(model: nn.Module, layers: Sequence[str], apply_one: Callable[[nn.Module, str, float], None],
                     evaluate: Callable[[nn.Module], float],
                     sparsities: Sequence[float] = DEFAULT_SPARSITIES) -> SensitivityCurves:
    """Sweep each layer alone over `sparsities`; `apply_one(copy, layer, s)` compresses the copy."""
    baseline = evaluate(model)
    curves: dict[str, list[float]] = {}
    for name in layers:
        curves[name] = []
        for sparsity in sparsities:
            trial = copy.deepcopy(model)
            apply_one(trial, name, sparsity)
            curves[name].append(evaluate(trial))
    return SensitivityCurves(tuple(sparsities), baseline, curves)
