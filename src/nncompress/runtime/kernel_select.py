"""Per-layer choice between dense and sparse (torch CSR) kernels, by a quick measurement.

Unstructured sparsity only pays off above a machine-dependent density (on 2-core AVX2 VMs torch CSR
beats dense GEMM at about 90% sparsity and batch 64, not at batch 1: benchmarks/results/
sparse_latency_2t.md), so `use_sparse_kernels_` measures instead of guessing. For every Linear and
Conv2d (groups = 1) whose weight, as the model computes with it (after masks, or decoded after
`convert_`), has at most `max_density` non-zeros, it captures the layer's real input on `example`,
builds the sparse candidate (`runtime/sparse.py`: SparseLinear, or im2col + CSR for SparseConv2d),
checks it gives the same outputs, times dense (`F.linear` / `F.conv2d` on the materialized weight)
and sparse in interleaved rounds (A B A B ..., medians), and swaps the layer for the sparse one
only when it is at least `min_speedup` times faster. Layers with an activation quantizer stay dense
(the sparse modules have none). The returned table says what was measured and chosen for each layer.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrize import type_before_parametrizations

from ..analysis.hooks import eval_with_hooks
from ..batches import feed
from ..validate import UserError, check_fraction, check_int_range
from .sparse import SparseConv2d, SparseLinear


@dataclass
class KernelChoice:
    """One layer's row: its density, the median dense and sparse times (ms, None if not measured),
    dense / sparse, and the kernel chosen ("sparse" or "dense") with why."""

    name: str
    kind: str
    shape: tuple[int, ...]
    density: float
    dense_ms: float | None
    sparse_ms: float | None
    choice: str
    reason: str

    @property
    def speedup(self) -> float | None:
        return None if not self.dense_ms or not self.sparse_ms else self.dense_ms / self.sparse_ms

    def as_dict(self) -> dict:
        return {**asdict(self), "shape": list(self.shape), "speedup": self.speedup}


def interleaved_times(dense: Callable[[], object], sparse: Callable[[], object], *, rounds: int = 7,
                      warmup: int = 2, min_seconds: float = 2e-3,
                      clock: Callable[[], float] = time.perf_counter) -> tuple[list[float], list[float]]:
    """Milliseconds per call of `dense()` and `sparse()`, one pair per round, timed in turns after
    warm-up; each timing repeats the call enough times to last about `min_seconds`. `clock`:
    wall time by default; `time.process_time` (CPU time of this process) on a loaded machine with
    one torch thread, where wall time counts the time other processes held the core."""
    for _ in range(warmup):
        dense()
        sparse()
    start = clock()
    dense()
    inner = max(1, int(min_seconds / max(clock() - start, 1e-6)))
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(rounds):
        for fn, out in ((dense, times[0]), (sparse, times[1])):
            start = clock()
            for _ in range(inner):
                fn()
            out.append((clock() - start) / inner * 1e3)
    return times


def interleaved_ms(dense: Callable[[], object], sparse: Callable[[], object], *, rounds: int = 7,
                   clock: Callable[[], float] = time.perf_counter) -> tuple[float, float]:
    """Median milliseconds of `dense()` and `sparse()` (see `interleaved_times`)."""
    dense_ms, sparse_ms = interleaved_times(dense, sparse, rounds=rounds, clock=clock)
    return statistics.median(dense_ms), statistics.median(sparse_ms)


def _capture_inputs(model: nn.Module, names: list[str], example: object) -> dict[str, torch.Tensor]:
    """The first input each named layer receives when `model` runs on `example`."""
    seen: dict[str, torch.Tensor] = {}

    def hook(name: str):
        def record(module: nn.Module, args: tuple) -> None:
            seen.setdefault(name, args[0].detach())
        return record

    with eval_with_hooks(model, {name: hook(name) for name in names}, pre=True):
        feed(model, example)
    return seen


def _candidate(layer: nn.Module, weight: torch.Tensor) -> tuple[nn.Module | None, Callable | None, str]:
    """(sparse module, dense function, why not) for a layer."""
    if getattr(layer, "input_quantizer", None) is not None:  # the sparse module would run without it
        return None, None, "the layer quantizes its input (the sparse kernel has no activation quantizer)"
    bias = layer.bias.detach() if layer.bias is not None else None
    if isinstance(layer, nn.Linear):
        return SparseLinear(weight, bias), lambda x: F.linear(x, weight, bias), ""
    if layer.groups != 1 or layer.padding_mode != "zeros" or isinstance(layer.padding, str):
        return None, None, "grouped / non-zero-padded convolution"
    sparse = SparseConv2d(weight, bias, layer.stride, layer.padding, layer.dilation)
    return sparse, lambda x: F.conv2d(x, weight, bias, layer.stride, layer.padding, layer.dilation), ""


@torch.no_grad()
def use_sparse_kernels_(model: nn.Module, example: object, *, max_density: float = 0.5, min_speedup: float = 1.1,
                        rounds: int = 7, rtol: float = 1e-4, atol: float = 1e-5,
                        clock: Callable[[], float] = time.perf_counter) -> list[KernelChoice]:
    """Swap each Linear / Conv2d of `model` for its sparse-kernel version where that measures at
    least `min_speedup` x faster on the layer's input from `example` (any batch `batches.py` feeds);
    layers denser than `max_density` are not measured. Returns one `KernelChoice` per layer, in
    model order. The model is put in eval mode (sparse layers are inference only). `clock`: see
    `interleaved_times`."""
    check_fraction("max_density", max_density, allow_one=True)
    check_int_range("rounds", rounds, 1, 1000)
    if not isinstance(min_speedup, (int, float)) or min_speedup != min_speedup or min_speedup < 0:
        raise UserError(f"min_speedup={min_speedup!r} must be a number >= 0 (1.0: choose whichever is faster)")
    model.eval()
    layers = {n: m for n, m in model.named_modules()
              if type_before_parametrizations(m) in (nn.Linear, nn.Conv2d) and n}
    inputs = _capture_inputs(model, list(layers), example)
    rows = []
    for name, layer in layers.items():
        weight = layer.weight.detach().clone()  # what the layer computes with (masked / decoded)
        density = float(torch.count_nonzero(weight)) / max(weight.numel(), 1)
        row = KernelChoice(name, type_before_parametrizations(layer).__name__, tuple(weight.shape), density,
                           None, None, "dense", "")
        rows.append(row)
        if name not in inputs:
            row.reason = "not called on the example"
            continue
        if density > max_density:
            row.reason = f"density {density:.2f} > max_density {max_density:.2f}"
            continue
        sparse, dense_fn, why_not = _candidate(layer, weight)
        if sparse is None:
            row.reason = why_not
            continue
        x = inputs[name]
        expected = dense_fn(x)
        if not torch.allclose(sparse(x), expected, rtol=rtol, atol=atol * max(float(expected.abs().max()), 1.0)):
            row.reason = "sparse output differs from dense"
            continue
        row.dense_ms, row.sparse_ms = interleaved_ms(lambda: dense_fn(x), lambda: sparse(x), rounds=rounds, clock=clock)
        if row.dense_ms >= min_speedup * row.sparse_ms:
            model.set_submodule(name, sparse)
            row.choice, row.reason = "sparse", f"{row.speedup:.2f}x >= {min_speedup:g}x"
        else:
            row.reason = f"{row.speedup:.2f}x < {min_speedup:g}x"
    return rows
