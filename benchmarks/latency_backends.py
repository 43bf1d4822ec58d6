"""Latency of several models on one backend (PyTorch eager, channels_last, TorchScript, ONNX Runtime),
every model given the same treatment, outputs checked against eager before any timing, timed
interleaved with the order reversed every round (export/bench.interleaved). Used by structured.py:
dense and pruned models on the same backend."""
from __future__ import annotations

import copy

import torch
from torch import nn

from nncompress.export.bench import interleaved

BACKENDS = ("eager", "channels_last", "torchscript", "ort")
BACKEND_NAMES = {"eager": "PyTorch eager (NCHW)", "channels_last": "PyTorch eager, channels_last",
                 "torchscript": "TorchScript freeze + optimize_for_inference", "ort": "ONNX Runtime (fp32)"}


def runner(model: nn.Module, x: torch.Tensor, backend: str, threads: int):
    """A no-argument callable running `model` on batch `x` on `backend` (the same treatment for the
    dense and the pruned models; ONNX Runtime sessions get `threads` intra-op threads)."""
    model = copy.deepcopy(model).eval()
    if backend == "eager":
        return lambda: model(x)
    if backend == "channels_last":
        model = model.to(memory_format=torch.channels_last)
        xc = x.contiguous(memory_format=torch.channels_last)
        return lambda: model(xc)
    if backend == "torchscript":
        with torch.no_grad():
            frozen = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(model, x)))
        return lambda: frozen(x)
    if backend == "ort":
        from nncompress.export.graph import ort_session
        from nncompress.export.onnx import export_onnx

        session = ort_session(export_onnx(model, x[:1], weight_range="full").model, threads)
        feed = {"input": x.numpy()}
        return lambda: session.run(None, feed)
    raise ValueError(f"unknown backend {backend!r}; choose from {BACKENDS}")


def check_outputs(fns: dict, reference: dict[str, torch.Tensor], backend: str) -> None:
    """Every backend computes what eager computes (a backend that is fast but wrong proves nothing)."""
    for name, fn in fns.items():
        out = fn()
        out = torch.from_numpy(out[0]) if isinstance(out, list) else out
        err = float((out.float() - reference[name]).abs().max())
        if err > 1e-3 * max(1.0, float(reference[name].abs().max())):
            raise RuntimeError(f"{backend}: {name} differs from eager by {err:.2e}")


def latency(models: dict[str, nn.Module], x: torch.Tensor, repeats: int, threads: int,
            backend: str = "eager", threads_after: int = 1) -> dict[str, list[float]]:
    """Interleaved seconds per batch of every model on one backend with `threads` threads (torch's
    thread count is set back to `threads_after` afterwards)."""
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            reference = {name: m.eval()(x) for name, m in models.items()}
        with torch.no_grad():
            fns = {name: runner(m, x, backend, threads) for name, m in models.items()}
        with torch.inference_mode():
            check_outputs(fns, reference, backend)
            return interleaved(fns, repeats, warmup=3, alternate=True)
    finally:
        torch.set_num_threads(threads_after)
