"""Watching layers during one measurement: forward hooks that never outlive it.

Every per-layer measurement (MAC counts, calibration observers, activation densities, the inputs a
kernel is timed on, a PE array's output columns) runs the model with a hook on some of its layers.
`eval_with_hooks` is that pattern once: the model in eval mode with the hooks registered, and on
exit, whatever happens, the hooks removed and the training mode restored, so no hidden state stays
attached to the model (the style anchors' rule for hooks, docs/architecture.md).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager

from torch import nn


@contextmanager
def eval_with_hooks(model: nn.Module, hooks: Mapping[str, Callable], *, pre: bool = False) -> Iterator[nn.Module]:
    """`model` in eval mode with `hooks[name]` on its submodule `name`: a forward hook
    `hook(module, args, output)`, or a forward pre-hook `hook(module, args)` when `pre`.

        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.ReLU())
        >>> shapes = {}
        >>> with eval_with_hooks(net, {"0": lambda m, args, out: shapes.update(fc=tuple(out.shape))}):
        ...     _ = net(torch.zeros(4, 3))
        >>> shapes["fc"], net.training, len(net[0]._forward_hooks)
        ((4, 2), True, 0)
    """
    was_training = model.training
    handles = []
    try:
        for name, hook in hooks.items():
            module = model.get_submodule(name)
            handles.append(module.register_forward_pre_hook(hook) if pre else module.register_forward_hook(hook))
        model.eval()
        yield model
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
