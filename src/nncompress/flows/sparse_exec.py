"""Unstructured sparse execution, end to end: the flow behind `nncompress sparse-kernels`.

A pruned model's layers run on dense or sparse (torch CSR; convolutions as im2col + CSR) kernels,
chosen per layer by a quick measurement on the layer's real input (`runtime.kernel_select.
use_sparse_kernels_`). Then the whole model is timed against its dense twin (the same weights with
the masks squashed into plain tensors) the way `BENCHMARKING.md` asks: in one process, in turns
(dense, selected, dense, ...) after warm-up, reporting the median of the per-round speed-ups with
their min and max. Torch CSR pays off only at high sparsity (about 90% and up at batch 64, not at
batch 1), so on typical models most layers stay dense and the end-to-end figure is near 1x.
"""
from __future__ import annotations

import copy
import statistics

import torch
from torch import nn

from ..parametrize import squash_
from ..runtime.kernel_select import interleaved_times, use_sparse_kernels_
from ..sweep import pinned_torch_threads
from ..validate import UserError, check_int_range


def sparse_execution(model: nn.Module, x: torch.Tensor, *, threads: int = 2, rounds: int = 15,
                     layer_rounds: int = 7, max_density: float = 0.5,
                     min_speedup: float = 1.1) -> tuple[nn.Module, dict]:
    """(the model with the chosen kernels, figures): per-layer `KernelChoice` rows and the end-to-end
    speed-up dense / selected (median of `rounds` interleaved per-round ratios, min, max) on input
    `x`, with torch pinned to `threads`. The outputs of both are checked to agree first."""
    check_int_range("threads", threads, 1, 256)
    check_int_range("rounds", rounds, 1, 1000)
    dense = squash_(copy.deepcopy(model)).eval()
    selected = copy.deepcopy(dense)
    with pinned_torch_threads(threads), torch.no_grad():
        choices = use_sparse_kernels_(selected, x, max_density=max_density, min_speedup=min_speedup,
                                      rounds=layer_rounds)
        expected, got = dense(x), selected(x)
        scale = max(float(expected.abs().max()), 1.0)
        if not torch.allclose(got, expected, rtol=1e-4, atol=1e-4 * scale):
            raise UserError("the sparse kernels' outputs differ from the dense model's (max abs difference "
                            f"{float((got - expected).abs().max()):.3g}); nothing was timed")
        base, cand = interleaved_times(lambda: dense(x), lambda: selected(x), rounds=rounds)
    ratios = [b / c for b, c in zip(base, cand)]
    return selected, {"threads": threads, "batch": x.shape[0], "rounds": rounds,
                      "layers": [c.as_dict() for c in choices],
                      "sparse_layers": sum(c.choice == "sparse" for c in choices),
                      "dense_ms": statistics.median(base), "selected_ms": statistics.median(cand),
                      "speedup": statistics.median(ratios), "speedup_min": min(ratios), "speedup_max": max(ratios)}
