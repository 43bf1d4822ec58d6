"""Run calibration data through a model and let observers watch chosen layers' inputs.

Hooks are attached only for the duration of the call and always removed (no leaked state).
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from .observers import Observer


@torch.no_grad()
def observe_inputs(model: nn.Module, observers: dict[str, Observer], batches: Iterable,
                   max_batches: int | None = None) -> dict[str, Observer]:
    """Feed `batches` ((x, y) pairs or tensors) to `model`; observers[name] sees layer `name`'s input."""
    handles = []
    for name, observer in observers.items():
        layer = model.get_submodule(name)
        handles.append(layer.register_forward_pre_hook(lambda _m, args, obs=observer: obs.observe(args[0])))
    was_training = model.training
    model.eval()
    try:
        for i, batch in enumerate(batches):
            if max_batches is not None and i >= max_batches:
                break
            model(batch[0] if isinstance(batch, (tuple, list)) else batch)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return observers


@torch.no_grad()
def capture_outputs(model: nn.Module, names: Iterable[str], x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Outputs of the named submodules for one input batch."""
    outputs: dict[str, torch.Tensor] = {}
    handles = [model.get_submodule(n).register_forward_hook(
        lambda _m, _a, out, n=n: outputs.__setitem__(n, out.detach().clone())) for n in names]
    was_training = model.training
    model.eval()
    try:
        model(x)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return outputs
