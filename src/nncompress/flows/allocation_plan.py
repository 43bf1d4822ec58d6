"""What the allocator (`flows/allocate.py`) is asked and what it answers: `AllocationConfig` (the
budget, the candidate grid, the retraining and the storage), `Candidate` (one layer's (density, bits)
with its exact bytes and measured damage) and `Allocation` (the plan). Kept apart from the steps
that compute them, so the table (`allocation_table.py`), the fit (`budget_fit.py`) and the flow
(`allocate.py`) all import them from below.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from torch import nn

from ..analysis.metrics import count_params
from ..encode.layout import Coding
from ..prune.unstructured import MagnitudePrune
from ..quant.kmeans import KMeansQuant
from ..validate import UserError, check_fraction, check_positive
from .deep_compression import DeepCompressionConfig
from .distill import DistillConfig


@dataclass(frozen=True)
class Candidate:
    """One (density, bits) choice for one layer: its exact byte cost and its measured damage."""

    density: float
    bits: int
    bytes: int
    loss: float  # increase of the loss (cross-entropy by default), this layer alone compressed
    accuracy: float  # change of accuracy (negative: a drop; 0 without class targets), this layer alone compressed


DEFAULT_DENSITIES = (1.0, 0.7, 0.5, 0.35, 0.25, 0.18, 0.13, 0.09, 0.065, 0.045, 0.032, 0.023, 0.016, 0.011, 0.008)
DEFAULT_BITS = (1, 2, 3, 4, 5, 6, 7, 8)


@dataclass(frozen=True, kw_only=True)
class AllocationConfig:
    """A size budget (`target_bytes` or `target_ratio` = fp32 parameter bytes / file bytes) or an
    accuracy budget (`max_accuracy_drop`, a fraction, predicted by the additive sensitivity model);
    the candidate grid; the retraining of `flows/prune.py` and the codebook fine-tuning of Deep
    Compression; `margin`: the fraction of the budget kept free when planning;
    `sensitivity_retrain_images`: > 0 measures the damage after a short retraining (module step 6);
    `distill_alpha` / `distill_temperature`: knowledge distillation from the dense model during all
    retraining (`flows/distill.py`; alpha 0 = off), which the same-budget control then gets too;
    `bias_bits`: biases stored as integer codes (None: float16), counted in the fixed bytes;
    `mask_coding` / `header_coding`: the file's storage (`DeepCompressionConfig`; planned with it too);
    `joint_rounds`: module step 8 (0 = the additive plan as is)."""

    @property
    def distill(self) -> DistillConfig:
        return DistillConfig(self.distill_alpha, self.distill_temperature)

    @property
    def coding(self) -> Coding:
        return Coding(self.mask_coding, self.header_coding)

    target_bytes: int | None = None
    target_ratio: float | None = None
    max_accuracy_drop: float | None = None
    densities: tuple[float, ...] = DEFAULT_DENSITIES
    bits: tuple[int, ...] = DEFAULT_BITS
    sensitivity_images: int = 1024
    sensitivity_retrain_images: int = 0  # 0: damage measured on the dense model as is (no retraining)
    margin: float = 0.02
    schedule: str = "iterative"
    rounds: int = 3
    finetune_epochs: int = 5
    lr_factor: float = 0.1
    codebook_epochs: int = 3
    codebook_lr: float = 1e-3
    distill_alpha: float = 0.0
    distill_temperature: float = 4.0
    bias_bits: int | None = None
    mask_coding: str = "relative"
    header_coding: str = "zlib"
    joint_rounds: int = 0  # step 8: re-measure in the plan's context and re-solve this many times

    def __post_init__(self) -> None:
        DistillConfig(self.distill_alpha, self.distill_temperature)  # checks both
        DeepCompressionConfig(bias_bits=self.bias_bits, mask_coding=self.mask_coding,
                              header_coding=self.header_coding)  # checks them
        given = [v is not None for v in (self.target_bytes, self.target_ratio, self.max_accuracy_drop)]
        if sum(given) != 1:
            raise UserError("give exactly one budget: target_bytes, target_ratio or max_accuracy_drop")
        if self.target_bytes is not None and self.target_bytes < 1:
            raise UserError(f"target_bytes={self.target_bytes} must be >= 1")
        if self.target_ratio is not None:
            check_positive("target_ratio", self.target_ratio)
        if self.max_accuracy_drop is not None:
            check_fraction("max_accuracy_drop", self.max_accuracy_drop)
        check_fraction("margin", self.margin)
        if not self.densities or not all(0.0 < d <= 1.0 for d in self.densities):
            raise UserError(f"densities={self.densities} must be fractions in (0, 1]")
        if not self.bits or not all(1 <= b <= 16 for b in self.bits):
            raise UserError(f"bits={self.bits} must be integers in [1, 16]")
        if not 0 <= self.joint_rounds <= 10:
            raise UserError(f"joint_rounds={self.joint_rounds} must be in [0, 10]")
        if self.joint_rounds and self.max_accuracy_drop is not None:
            raise UserError(f"joint_rounds={self.joint_rounds} applies to size budgets (target_bytes / target_ratio), "
                            "not max_accuracy_drop")
        if self.sensitivity_retrain_images < 0:
            raise UserError(f"sensitivity_retrain_images={self.sensitivity_retrain_images} must be >= 0")

    def budget_bytes(self, model: nn.Module) -> int | None:
        """The size budget in bytes (None for an accuracy budget)."""
        if self.target_bytes is not None:
            return self.target_bytes
        if self.target_ratio is not None:
            return int(4 * count_params(model) / self.target_ratio)
        return None


@dataclass
class Allocation:
    """The plan: per layer the chosen candidate, the fixed bytes and the whole candidate table."""

    choice: dict[str, Candidate]
    fixed_bytes: int
    budget: int | None
    table: dict[str, list[Candidate]] = field(default_factory=dict)
    planned_bytes: int = 0  # exact bytes of the planned file, before retraining

    @property
    def densities(self) -> dict[str, float]:
        return {name: c.density for name, c in self.choice.items()}

    @property
    def bits(self) -> dict[str, int]:
        return {name: c.bits for name, c in self.choice.items()}

    def methods(self) -> tuple[MagnitudePrune, KMeansQuant]:
        """The plan as the two Methods that carry it out: magnitude pruning to each layer's density,
        then weight sharing with each layer's bits (apply them in this order; retrain in between)."""
        sparsity = {name: 1.0 - d for name, d in self.densities.items()}
        return (MagnitudePrune(sparsity=float(np.mean(list(sparsity.values()))), layer_sparsity=sparsity),
                KMeansQuant(layer_bits=self.bits))
