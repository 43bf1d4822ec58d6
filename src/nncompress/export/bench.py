"""Workflows around the ONNX export (used by `nncompress export` / `bench` and benchmarks/runtime_speed.py):
quantize a model for export when it is not quantized yet, check the exported file against the model
on data, and time float32 / int8 in PyTorch and ONNX Runtime interleaved (shared/BENCHMARKING.md).
"""
from __future__ import annotations

import copy
import os
import statistics
import time
import warnings
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from ..config import Context, run_method
from ..parametrize import squash_, transforms
from ..quant.convert import convert_
from ..quant.fold import fold_batchnorm_
from ..quant.ptq import DynamicQuant, LinearQuant
from ..quant.activation import detach_input_quantizer, input_quantizer
from .graph import ort_session

QUANTIZE_CHOICES = ("static", "dynamic", "none")


def is_quantized(model: nn.Module) -> bool:
    """True when some layer carries a weight transform or an activation quantizer."""
    return any(input_quantizer(m) is not None or transforms(m, "weight") for m in model.modules())


def float_baseline(model: nn.Module) -> nn.Module:
    """A float32 copy of `model` to time against: the weights it computes with, as plain tensors, and
    no activation quantizers (an already quantized model's fake-quantized float run is not the float
    baseline)."""
    net = squash_(copy.deepcopy(model).eval())
    for module in net.modules():
        detach_input_quantizer(module)
    return net


def quantize_for_export(model: nn.Module, how: str, calib: list[torch.Tensor]) -> nn.Module:
    """A converted copy of `model`: W8A8 static per-channel (BatchNorm folded, calibrated on `calib`)
    or W8 + dynamic per-token activations; an already quantized model is only converted."""
    net = copy.deepcopy(model).eval()
    if not is_quantized(net) and how != "none":
        fold_batchnorm_(net)
        method = LinearQuant(weight_bits=8, act_bits=8) if how == "static" else DynamicQuant(per_token=True)
        run_method(net, method, Context(data=calib))
    return convert_(net)


@torch.no_grad()
def compare_on_data(model: nn.Module, session, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> dict:
    """Top-1 accuracy of `model` (PyTorch) and the ONNX session on the same batches, their agreement
    and the largest output difference relative to the largest output."""
    correct_torch = correct_ort = agree = total = 0
    max_diff = max_out = 0.0
    for x, y in batches:
        ref = model(x)
        got = torch.from_numpy(session.run(None, {"input": x.numpy()})[0])
        correct_torch += int((ref.argmax(1) == y).sum())
        correct_ort += int((got.argmax(1) == y).sum())
        agree += int((ref.argmax(1) == got.argmax(1)).sum())
        total += len(y)
        max_diff, max_out = max(max_diff, float((ref - got).abs().max())), max(max_out, float(ref.abs().max()))
    return {"images": total, "torch_accuracy": correct_torch / total, "ort_accuracy": correct_ort / total,
            "top1_agreement": agree / total, "max_abs_diff": max_diff, "max_rel_diff": max_diff / max(max_out, 1e-12)}


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-30))


def torch_dynamic_int8(model: nn.Module) -> nn.Module | None:
    """torch's own `quantize_dynamic` (int8 Linear, fbgemm / x86) of a float model; None when the model
    has no Linear layer (torch has no dynamic int8 Conv)."""
    if not any(isinstance(m, nn.Linear) for m in model.modules()):
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torch.ao.quantization import quantize_dynamic
        return quantize_dynamic(copy.deepcopy(model).eval(), {nn.Linear}, dtype=torch.qint8)


def interleaved(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 2,
                min_seconds: float = 0.05, alternate: bool = False) -> dict[str, list[float]]:
    """Seconds per call of each function, timed in turns (A B C A B C ...) after warm-up; each turn
    repeats a function until `min_seconds` so fast calls are not dominated by timer noise.
    `alternate`: reverse the order every round (A B C, C B A, ...) so no function always runs right
    after a particular other one."""
    inner = {}
    for name, fn in fns.items():
        for _ in range(warmup):
            fn()
        start = time.perf_counter()
        fn()
        inner[name] = max(1, int(min_seconds / max(time.perf_counter() - start, 1e-6)))
    times: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for r in range(repeats):
        for name in (names[::-1] if alternate and r % 2 else names):
            start = time.perf_counter()
            for _ in range(inner[name]):
                fns[name]()
            times[name].append((time.perf_counter() - start) / inner[name])
    return times


def ratio(times: dict[str, list[float]], base: str, other: str) -> tuple[float, float, float]:
    """Median, min and max of the per-round speed-ups base / other."""
    ratios = [b / o for b, o in zip(times[base], times[other])]
    return statistics.median(ratios), min(ratios), max(ratios)


def bench_backends(float_model: nn.Module, int8_model: nn.Module, x: torch.Tensor, *, threads: int, repeats: int,
                   calib: list[torch.Tensor] | None = None, torch_int8: nn.Module | None = None,
                   weight_range: str = "auto") -> dict:
    """Latency of float32 PyTorch, our int8 PyTorch (`to_int8_`), torch's quantize_dynamic (when given),
    float32 ONNX Runtime and our int8 ONNX export on input `x`, interleaved, with `threads` threads;
    returns rows and notes (the export's, and why a backend is missing)."""
    from ..runtime.int8_torch import to_int8_
    from ..runtime.qvalue import UnsupportedModelError
    from .onnx import export_onnx

    torch.set_num_threads(threads)
    float_onnx = export_onnx(float_model, x[:1], weight_range="full")
    int8_onnx = export_onnx(int8_model, x[:1], calibration=calib, weight_range=weight_range)
    s_float, s_int8 = ort_session(float_onnx.model, threads), ort_session(int8_onnx.model, threads)
    feed = {"input": x.numpy()}
    notes = list(int8_onnx.notes)
    if os.getloadavg()[0] >= threads:
        notes.append(f"load average {os.getloadavg()[0]:.1f} with {threads} thread(s) per backend: other processes "
                     "share the cores, so these timings are noisy (PyTorch's OpenMP threads suffer most); use fewer "
                     "--threads or a quiet machine")
    try:
        ours_torch = to_int8_(copy.deepcopy(int8_model), exact=False)
    except UnsupportedModelError as error:
        ours_torch = None
        notes.append(f"no int8 torch row: {error}")
    if ours_torch is not None and not any(getattr(type(m), "int8_kernel", False) for m in ours_torch.modules()):
        ours_torch = None
        notes.append("no int8 torch row: no layer of the model is quantized for int8 kernels")
    fns: dict[str, Callable[[], object]] = {}
    with torch.inference_mode():
        fns["float32 torch"] = lambda: float_model(x)
        if ours_torch is not None:
            fns["int8 torch (nncompress to_int8_)"] = lambda: ours_torch(x)
        if torch_int8 is not None:
            fns["int8 torch (quantize_dynamic)"] = lambda: torch_int8(x)
        fns["float32 ORT"] = lambda: s_float.run(None, feed)
        fns["int8 ORT (nncompress export)"] = lambda: s_int8.run(None, feed)
        times = interleaved(fns, repeats)
    rows = []
    for name, ts in times.items():
        med = statistics.median(ts)
        rows.append({"backend": name, "ms": 1e3 * med, "items_per_s": len(x) / med,
                     "vs_float32_torch": ratio(times, "float32 torch", name)[0],
                     "vs_float32_ort": ratio(times, "float32 ORT", name)[0]})
    return {"batch": len(x), "threads": threads, "repeats": repeats, "rows": rows, "notes": notes,
            "weight_range": int8_onnx.weight_range}
