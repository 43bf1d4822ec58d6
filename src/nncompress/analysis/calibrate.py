"""Run calibration data through a model and let observers watch chosen layers' inputs.

Batches may have any shape `batches.py` feeds (tensors, (x, y), dicts / BatchEncodings, or a
`forward_fn`). Hooks are attached only for the duration of the call and always removed (no leaked state).
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from ..batches import ForwardFn, feed, output_tensor
from ..validate import UserError
from .hooks import eval_with_hooks
from .observers import Observer


@torch.no_grad()
def observe_inputs(model: nn.Module, observers: dict[str, Observer], batches: Iterable,
                   max_batches: int | None = None, *, forward_fn: ForwardFn | None = None) -> dict[str, Observer]:
    """Feed `batches` to `model` (eval mode); observers[name] sees layer `name`'s first input."""
    hooks = {name: lambda _m, args, obs=observer: obs.observe(args[0]) for name, observer in observers.items()}
    seen = 0
    with eval_with_hooks(model, hooks, pre=True):
        for i, batch in enumerate(batches):
            if max_batches is not None and i >= max_batches:
                break
            feed(model, batch, forward_fn)
            seen += 1
    if not seen and observers and max_batches != 0:
        raise UserError("the calibration data is empty (no batch): pass data= at least one batch")
    return observers


@torch.no_grad()
def capture_outputs(model: nn.Module, names: Iterable[str], batch: Any, *,
                    forward_fn: ForwardFn | None = None) -> dict[str, torch.Tensor]:
    """Outputs of the named submodules for one batch (a layer returning a tuple or ModelOutput
    contributes its main tensor, `batches.output_tensor`)."""
    outputs: dict[str, torch.Tensor] = {}
    hooks = {n: lambda _m, _a, out, n=n: outputs.__setitem__(n, output_tensor(out).detach().clone()) for n in names}
    with eval_with_hooks(model, hooks):
        feed(model, batch, forward_fn)
    return outputs
