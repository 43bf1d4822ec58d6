"""Activation-outlier statistics and a function-preserving way to create them.

`channel_outlier_ratio` measures what Yoo's lecture "Compressing Neural Networks: Pruning and
Quantization" (SNU 2023, "Wide distributions of activation and weight", after ZeroQuant, Yao et al.
2022) plots for GPT-3 350M: max_c |x_c|_max / median_c |x_c|_max, how much larger the largest input
channel of a Linear layer is than a typical one. `inject_outlier_channels_` reproduces the
phenomenon of large language models in a small model without changing its function: it multiplies
a few channels of a LayerNorm's output (its gain and bias) by `factor` and divides the matching
input columns of the Linear layers that read it by the same factor.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from ..analysis.calibrate import observe_inputs
from ..analysis.observers import MinMaxObserver


def channel_outlier_ratio(model: nn.Module, layer_names: Iterable[str], batches: Iterable) -> dict[str, float]:
    """Per layer: max over channels of max|x_j| divided by the median over channels of max|x_j|."""
    observers = observe_inputs(model, {n: MinMaxObserver(axis=-1) for n in layer_names}, batches)
    ratios = {}
    for name, obs in observers.items():
        lo, hi = obs.range()
        absmax = torch.maximum(lo.abs(), hi.abs())
        ratios[name] = float(absmax.max() / absmax.median().clamp_min(1e-12))
    return ratios


@torch.no_grad()
def inject_outlier_channels_(norm: nn.LayerNorm, readers: Iterable[nn.Linear], channels: list[int], factor: float) -> None:
    """Scale LayerNorm output channels by `factor` and the readers' input columns by 1 / factor."""
    idx = torch.tensor(channels)
    norm.weight[idx] *= factor
    norm.bias[idx] *= factor
    for linear in readers:
        linear.weight[:, idx] /= factor
