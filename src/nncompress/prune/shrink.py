"""Physical shrinking: turn channel masks into a genuinely smaller dense model (fewer filters, the next
layer's input channels and the BatchNorms trimmed), so structured pruning runs faster on any backend
("Coarse-grained/Structured: easy to accelerate (just a smaller matrix!)", Yoo's pruning lecture).

Channels are removed per dependency group (`dependency.channel_groups`, a torch.fx trace), so the
layers joined by a residual add lose the same channels, depthwise convolutions lose the channels of
their input, and a Linear after a flatten loses each removed channel's block of features. A channel is
removed only when that provably leaves the outputs unchanged:

- every source of the channel is exactly zero: each producer's filter (and bias), each BatchNorm's
  gamma and beta, each depthwise conv's bias (the ops between them map 0 to 0), or
- every consumer ignores it: its input weights are zero in all of them.

So the shrunk model computes what the masked model computed, to float tolerance (the summation order
of the smaller convolutions differs).
"""
from __future__ import annotations

import torch
from torch import nn

from ..parametrize import squash_, transforms
from ..validate import UserError
from .dependency import CONVS, NORMS, Group, channel_groups

Example = torch.Tensor | tuple[torch.Tensor, ...]


def _zero(t: torch.Tensor | None, dim_size: int, reduce_from: int = 1) -> torch.Tensor:
    """Per-channel "is exactly zero" over dim 0 (all-True when the tensor is absent)."""
    if t is None:
        return torch.ones(dim_size, dtype=torch.bool)
    t = t.detach()
    return (t == 0).reshape(t.shape[0], -1).all(1) if t.dim() >= reduce_from + 1 else (t == 0)


def removable_channels(model: nn.Module, group: Group) -> torch.Tensor:
    """Bool per channel of `group`: True where removing the channel leaves the outputs unchanged."""
    modules = dict(model.named_modules())
    size = group.size
    sources = torch.ones(size, dtype=torch.bool)
    for name in group.producers:
        layer = modules[name]
        sources &= _zero(layer.weight, size) & _zero(layer.bias, size)
    for name in group.passthrough:
        layer = modules[name]
        if isinstance(layer, NORMS):
            affine = layer.weight is not None
            sources &= (_zero(layer.weight, size) & _zero(layer.bias, size)) if affine else torch.zeros(size, dtype=torch.bool)
        else:  # depthwise conv: maps a zero channel to its bias
            sources &= _zero(layer.bias, size)
    dead = torch.tensor(bool(group.consumers)).expand(size).clone()
    for name, factor in group.consumers:
        w = modules[name].weight.detach()
        columns = w.reshape(w.shape[0], size, factor, -1) if w.dim() > 2 else w.reshape(w.shape[0], size, factor)
        dead &= (columns == 0).transpose(0, 1).reshape(size, -1).all(1)
    return sources | dead


def _check_float(model: nn.Module) -> None:
    for name, module in model.named_modules():
        roles = {getattr(t, "role", "quantizer") for tn in ("weight", "bias") for t in transforms(module, tn)}
        if roles - {"mask"} or getattr(module, "input_quantizer", None) is not None:
            raise UserError(f"shrink_: layer {name!r} is quantized; shrink the pruned float model first, then quantize")


def _slice_param(module: nn.Module, tensor_name: str, dim: int, index: torch.Tensor) -> None:
    old = getattr(module, tensor_name, None)
    if old is None:
        return
    new = old.detach().index_select(dim, index.to(old.device)).clone()
    if isinstance(old, nn.Parameter):
        setattr(module, tensor_name, nn.Parameter(new, requires_grad=old.requires_grad))
    else:
        setattr(module, tensor_name, new)


def _shrink_outputs(module: nn.Module, keep: torch.Tensor) -> None:
    """Keep output channels `keep` of a Conv / Linear (producer) or of a BN / depthwise conv."""
    if isinstance(module, NORMS):
        for name in ("weight", "bias", "running_mean", "running_var"):
            _slice_param(module, name, 0, keep)
        module.num_features = len(keep)
        return
    _slice_param(module, "weight", 0, keep)
    _slice_param(module, "bias", 0, keep)
    if isinstance(module, nn.Linear):
        module.out_features = len(keep)
        return
    module.out_channels = len(keep)
    if module.groups > 1:  # depthwise: one filter per input channel
        module.in_channels = module.groups = len(keep)


def _shrink_inputs(module: nn.Module, keep: torch.Tensor, factor: int) -> None:
    """Keep input channels `keep` of a consumer (a Linear after flatten keeps each block of `factor`)."""
    columns = (keep[:, None] * factor + torch.arange(factor)).flatten()
    _slice_param(module, "weight", 1, columns)
    if isinstance(module, nn.Linear):
        module.in_features = len(columns)
    else:
        module.in_channels = len(keep)


def shrink_(model: nn.Module, example: Example) -> nn.Module:
    """Remove the removable channels of `model` in place (see the module doc) and squash every mask
    into plain weights; returns `model`. `example`: one input batch (or a tuple of positional inputs)
    to trace shapes with. A layer torch.fx cannot trace is a UserError naming it."""
    if not any(isinstance(m, (*CONVS, nn.Linear)) for m in model.modules()):
        raise UserError("shrink_: the model has no Conv / Linear layer")
    _check_float(model)
    example = example if isinstance(example, tuple) else (example,)
    groups = channel_groups(model, example)
    plan = [(g, torch.nonzero(~removable_channels(model, g)).flatten()) for g in groups]
    squash_(model)
    modules = dict(model.named_modules())
    for group, keep in plan:
        if len(keep) == group.size:
            continue
        if len(keep) == 0:
            keep = torch.zeros(1, dtype=torch.long)  # one (zero) channel keeps the graph connected
        for name in [*group.producers, *group.passthrough]:
            _shrink_outputs(modules[name], keep)
        for name, factor in group.consumers:
            _shrink_inputs(modules[name], keep, factor)
    return model


def shrink_summary(model: nn.Module, example: Example) -> list[dict]:
    """Per group: its layers and how many channels `shrink_` would keep (a dry run)."""
    example = example if isinstance(example, tuple) else (example,)
    return [{"producers": g.producers, "channels": g.size, "kept": int((~removable_channels(model, g)).sum())}
            for g in channel_groups(model, example)]
