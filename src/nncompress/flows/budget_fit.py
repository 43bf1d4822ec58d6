"""Fitting the written `.nnc` file into its byte budget (flows/allocate.py step 5).

The plan's bytes are exact for the dense model's candidates, but retraining changes the weights and
so the streams. Before any codebook fine-tuning, `fit_by_probing` shares and serializes the
retrained model (`flows/deep_compression.probe_file_bytes`, seconds; the fine-tuning keeps indices
and masks, so a probe's streams are the file's) and steps down while it is over the budget:
`lower_bits` takes the layer whose planned loss increase per byte saved is smallest one bit lower,
`step_down` repeats that until the table's bytes cover the excess, and where no layer's bits can go
lower `prune_further` prunes the largest layer 5% further. `compress_to_budget` runs the same step
on written files should one still be over.
"""
from __future__ import annotations

import math

import numpy as np
from torch import nn

from ..analysis.metrics import weight_layers
from ..config import Context, run_method
from ..prune.unstructured import MagnitudePrune
from ..validate import UserError
from ..zoo import Dataset
from ..encode.layout import Coding
from .allocation_plan import Allocation
from .deep_compression import probe_file_bytes
from .prune import calibration_batches

MAX_TRIES = 40  # written files (each after a codebook fine-tuning) before giving up on a budget
MAX_PROBES = 400  # probes (seconds each) before giving up
PROBE_SLACK = 0.002  # fraction of the budget a probe keeps free for what the codebook fine-tuning changes


def lower_bits(allocation: Allocation, bits: dict[str, int]) -> tuple[dict[str, int], int] | None:
    """One layer one bit lower: the one whose planned loss increase per byte saved is smallest;
    returns the new bits and the planned bytes saved, or None when no layer can go lower."""
    best, best_rate, best_saved = None, math.inf, 0
    for name, rows in allocation.table.items():
        now = next((c for c in rows if c.density == allocation.choice[name].density and c.bits == bits[name]), None)
        lower = next((c for c in rows if c.density == allocation.choice[name].density and c.bits == bits[name] - 1), None)
        if now is None or lower is None or lower.bytes >= now.bytes:
            continue
        rate = (lower.loss - now.loss) / (now.bytes - lower.bytes)
        if rate < best_rate:
            best, best_rate, best_saved = name, rate, now.bytes - lower.bytes
    if best is None:
        return None
    return {**bits, best: bits[best] - 1}, best_saved


def prune_further(model: nn.Module, dataset: Dataset, densities: dict[str, float],
                   fraction: float = 0.95) -> dict[str, float]:
    """The last resort when no bits can be lowered: the layer keeping the most weights drops the
    smallest 5% of its survivors (magnitude pruning on top of the current mask, no retraining; the
    codebook fine-tuning that follows adapts the rest). Returns the new densities."""
    layers = weight_layers(model)
    name = max(densities, key=lambda n: densities[n] * layers[n].weight.numel())
    new = {**densities, name: densities[name] * fraction}
    sparsity = {n: 1.0 - d for n, d in new.items()}
    run_method(model, MagnitudePrune(sparsity=float(np.mean(list(sparsity.values()))), layer_sparsity=sparsity),
               Context(data=calibration_batches(dataset)))
    return new


def step_down(model: nn.Module, dataset: Dataset, allocation: Allocation, bits: dict[str, int],
             densities: dict[str, float], excess: int = 1) -> tuple[dict[str, int], dict[str, float]]:
    """Down in bytes by about `excess`: bits lowered one at a time (cheapest loss per byte first)
    until the table's planned savings cover it, so a file far over the budget does not take one
    probe per bit; where no layer's bits can go lower, the largest layer pruned 5% further, in place."""
    saved, step = 0, lower_bits(allocation, bits)
    if step is None:
        return bits, prune_further(model, dataset, densities)
    while step is not None and saved < excess:
        bits, saved = step[0], saved + step[1]
        step = lower_bits(allocation, bits)
    return bits, densities


def check_tries(tries: int, file_bytes: int, budget: int, limit: int = MAX_TRIES, what: str = "tries") -> None:
    if tries >= limit:
        raise UserError(f"the file ({file_bytes:,} B) still exceeds the budget ({budget:,} B) after {tries} {what}; "
                        "give a larger margin")


def fit_by_probing(model: nn.Module, arch: str, dataset: Dataset, allocation: Allocation, seed: int,
                    bias_bits: int | None = None, coding: Coding = Coding(),
                    slack: float = PROBE_SLACK) -> tuple[dict[str, int], dict[str, float], list[dict]]:
    """The allocation's bits and densities, stepped down (`step_down`) until the probe of the file
    (`probe_file_bytes`: sharing without the codebook fine-tuning) fits the budget with `slack` (a
    fraction; never more than the plan's margin) to spare; returns them and the probes."""
    bits, densities, probes = allocation.bits, allocation.densities, []
    if allocation.budget is None:
        return bits, densities, probes
    while True:
        size = probe_file_bytes(model, arch, dataset, bits, seed, bias_bits, coding)
        probes.append({"bits": dict(bits), "densities": dict(densities), "probe_bytes": size})
        target = allocation.budget * (1 - slack)
        if size <= target:
            return bits, densities, probes
        check_tries(len(probes), size, allocation.budget, MAX_PROBES, "probes")
        bits, densities = step_down(model, dataset, allocation, bits, densities, excess=math.ceil(size - target))
