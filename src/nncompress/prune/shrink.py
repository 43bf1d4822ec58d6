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


def _stored_shape(state: dict[str, torch.Tensor], name: str, tensor_name: str) -> tuple[int, ...] | None:
    """The shape `state` holds for `<name>.<tensor_name>` (or its parametrized original)."""
    prefix = f"{name}." if name else ""
    for key in (f"{prefix}{tensor_name}", f"{prefix}parametrizations.{tensor_name}.original"):
        if key in state:
            return tuple(state[key].shape)
    return None


def _check_smaller(name: str, tensor_name: str, stored: tuple[int, ...], built: tuple[int, ...]) -> None:
    if len(stored) != len(built) or not all(1 <= s <= b for s, b in zip(stored, built)):
        raise UserError(f"shrunk model: layer {name!r} {tensor_name} is stored as {list(stored)}, but a shrunk "
                        f"{list(built)} tensor can only lose channels (each size in 1 .. the built size, same rank)")


def _resize_layer(module: nn.Module, name: str, shape: tuple[int, ...]) -> None:
    """Set a Conv / Linear's channel counts to a stored weight `shape` (depthwise: groups too)."""
    if isinstance(module, nn.Linear):
        module.out_features, module.in_features = shape
        return
    depthwise = module.groups > 1 and module.groups == module.in_channels == module.out_channels
    if module.groups > 1 and not (depthwise and shape[1] == 1):
        raise UserError(f"shrunk model: layer {name!r} is a grouped convolution (groups={module.groups}); only "
                        "depthwise convolutions are shrunk")
    module.out_channels = shape[0]
    module.in_channels = shape[0] if depthwise else shape[1] * module.groups
    if depthwise:
        module.groups = shape[0]


def resize_to_state_(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """Give every Conv / Linear / BatchNorm of a freshly built `model` the (smaller) shapes `state`
    holds, so that `load_state_dict(state)` restores a model `shrink_` made (same layers, fewer
    channels). The new tensors are uninitialised until the state is loaded. A stored tensor larger
    than the built one, or of another rank, is a UserError naming the layer."""
    for name, module in model.named_modules():
        if not isinstance(module, (*CONVS, nn.Linear, *NORMS)):
            continue
        for tensor_name in ("weight", "bias", "running_mean", "running_var"):
            built, stored = getattr(module, tensor_name, None), _stored_shape(state, name, tensor_name)
            if built is None or stored is None or tuple(built.shape) == stored:
                continue
            _check_smaller(name, tensor_name, stored, tuple(built.shape))
            if tensor_name == "weight" and not isinstance(module, NORMS):
                _resize_layer(module, name, stored)
            fresh = torch.empty(stored, dtype=built.dtype, device=built.device)
            setattr(module, tensor_name, nn.Parameter(fresh, requires_grad=built.requires_grad)
                    if isinstance(built, nn.Parameter) else fresh)
        if isinstance(module, NORMS) and module.running_mean is not None:
            module.num_features = module.running_mean.shape[0]
        elif isinstance(module, NORMS) and module.weight is not None:
            module.num_features = module.weight.shape[0]
    return model
