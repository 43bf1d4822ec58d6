"""Channel dependency groups from a torch.fx trace (the analysis half of structured pruning; the action
half is `structured.ChannelPrune` masking and `shrink.shrink_` removing).

Every tensor in the traced graph carries a *channel space*. Layers that compute new channels (a Conv
with groups=1, a Linear) are **producers** of their output space and **consumers** of their input
space; BatchNorm and depthwise convolutions are **passthrough** members (they keep the channel index
but hold per-channel tensors); zero-preserving elementwise ops (ReLU, pooling, dropout, flatten to a
Linear) pass the space on; an `add` / `sub` / `mul` of two tensors **joins** their spaces (a residual
connection: the stem, every block's last conv and the shortcut of a ResNet stage share one space and
must drop the same channels). A space is **fixed** (never pruned) when it reaches the model input or
output, a concatenation, a grouped conv, a layer called twice, or any operation this analysis does not
know. This is the dependency graph of Torch-Pruning (Fang et al., "DepGraph", CVPR 2023) restricted to
what can be proven safe.
"""
from __future__ import annotations

import copy
import operator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp
from torch.nn.utils.parametrize import type_before_parametrizations

from ..batches import Bound, split_batch
from ..validate import UserError

ZERO_PRESERVING_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Hardswish, nn.Tanh,
                           nn.Hardtanh, nn.Dropout, nn.Dropout2d, nn.Identity, nn.MaxPool1d, nn.MaxPool2d,
                           nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
                           nn.AdaptiveMaxPool2d)
ZERO_PRESERVING_FUNCTIONS = {torch.relu, torch.nn.functional.relu, torch.nn.functional.relu6, torch.tanh,
                             torch.nn.functional.gelu, torch.nn.functional.silu, torch.nn.functional.dropout,
                             torch.nn.functional.max_pool2d, torch.nn.functional.avg_pool2d,
                             torch.nn.functional.adaptive_avg_pool2d, torch.nn.functional.hardtanh}
ZERO_PRESERVING_METHODS = {"relu", "contiguous", "clone", "tanh"}
MULTIPLYING = {operator.mul, torch.mul}
JOINING = {operator.add, operator.sub, torch.add, torch.sub, operator.iadd, *MULTIPLYING}
SHAPE_QUERIES = {"size", "dim"}
CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


@dataclass
class Group:
    """Layers that share one channel space: drop channel c from all of them or from none.

    `producers`: Conv/Linear names whose output rows are the channels; `passthrough`: BatchNorm and
    depthwise conv names (per-channel tensors); `consumers`: (name, factor) of Conv/Linear layers that
    read the channels as inputs (factor > 1: a Linear after flatten, input c covers columns
    c*factor ... c*factor + factor - 1)."""

    size: int
    producers: list[str] = field(default_factory=list)
    passthrough: list[str] = field(default_factory=list)
    consumers: list[tuple[str, int]] = field(default_factory=list)


@dataclass
class _Space:
    size: int
    fixed: bool = False
    parent: int = -1


@dataclass
class _Value:
    """The channel view of one graph value: its space, the channel dim and the flatten factor."""

    space: int
    dim: int
    factor: int = 1


class _NamingTracer(fx.Tracer):
    """Traces through user modules, keeps layers as leaves, and names the module a trace fails in."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, (*CONVS, nn.Linear, *NORMS)) or super().is_leaf_module(m, qualname)

    def call_module(self, m: nn.Module, forward, args, kwargs):
        self.stack.append(self.path_of_module(m))
        try:
            return super().call_module(m, forward, args, kwargs)
        except UserError:
            raise
        except Exception as err:
            raise UserError(f"cannot trace layer {self.stack[-1]!r} ({type(m).__name__}) with torch.fx: {err}. "
                            "Structured pruning and shrinking need a traceable model; make that layer traceable "
                            "or leave the model unshrunk") from err
        finally:
            self.stack.pop()


def trace(model: nn.Module) -> fx.GraphModule:
    """The fx graph of `model` (Conv / Linear / BatchNorm stay leaves); a failure names the layer."""
    tracer = _NamingTracer()
    try:
        graph = tracer.trace(model)
    except UserError:
        raise
    except Exception as err:
        raise UserError(f"cannot trace the model ({type(model).__name__}) with torch.fx: {err}") from err
    return fx.GraphModule(tracer.root, graph)


def example_inputs(data: Any) -> tuple[torch.Tensor, ...]:
    """The positional input tensors of the first batch of `data` (what shapes are propagated with)."""
    batch = next(iter(data), None) if data is not None else None
    if batch is None:
        raise UserError("structured pruning needs an example batch to trace the model: pass data=[...]")
    if isinstance(batch, Bound):
        batch = batch.batch
    call = split_batch(batch)
    if call.kwargs or not all(isinstance(a, torch.Tensor) for a in call.args):
        raise UserError("structured pruning traces models called with positional tensors only; this batch "
                        f"has keyword inputs {sorted(call.kwargs)}")
    return tuple(call.args)


class _Analysis:
    def __init__(self, model: nn.Module, gm: fx.GraphModule):
        self.model, self.gm = model, gm
        self.modules = dict(model.named_modules())
        self.spaces: list[_Space] = []
        self.values: dict[fx.Node, _Value] = {}
        self.calls: dict[str, int] = {}
        self.roles: list[tuple[str, str, int, int]] = []  # (role, layer, space, factor)

    def new_space(self, size: int, fixed: bool = False) -> int:
        self.spaces.append(_Space(size, fixed))
        return len(self.spaces) - 1

    def find(self, s: int) -> int:
        while self.spaces[s].parent >= 0:
            s = self.spaces[s].parent
        return s

    def join(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        self.spaces[rb].parent = ra
        fixed = self.spaces[ra].fixed or self.spaces[rb].fixed or self.spaces[ra].size != self.spaces[rb].size
        self.spaces[ra].fixed = fixed

    def fix(self, node: Any) -> None:
        for n in _nodes_in(node):
            if n in self.values:
                self.spaces[self.find(self.values[n].space)].fixed = True

    def fresh(self, node: fx.Node, fixed: bool = True) -> None:
        shape = _shape(node)
        if shape is not None and len(shape) >= 2:
            self.values[node] = _Value(self.new_space(shape[1], fixed), 1)


def _shape(node: Any) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _nodes_in(obj: Any) -> list[fx.Node]:
    found: list[fx.Node] = []
    fx.node.map_arg(obj, lambda n: found.append(n))
    return found


def channel_groups(model: nn.Module, example: tuple[torch.Tensor, ...]) -> list[Group]:
    """The prunable channel groups of `model` (fixed spaces left out), traced with torch.fx and shaped
    with `example` (the positional inputs of one batch). The analysis runs on a copy, so stateful
    layers (observers, amax histories) do not see the example batch."""
    model = copy.deepcopy(model)
    gm = trace(model)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(*example)
    except UserError:
        raise
    except Exception as err:
        raise UserError(f"cannot run the traced model on the example batch: {err}") from err
    finally:
        model.train(was_training)
    analysis = _Analysis(model, gm)
    for node in gm.graph.nodes:
        _visit(analysis, node)
    return _collect(analysis)


def _visit(a: _Analysis, node: fx.Node) -> None:
    if node.op == "placeholder":
        a.fresh(node, fixed=True)
    elif node.op == "output":
        a.fix(node.args)
    elif node.op == "call_module":
        _visit_module(a, node, a.modules[str(node.target)])
    elif node.op == "call_function" and node.target in JOINING:
        _visit_join(a, node)
    elif node.op == "call_function" and node.target in ZERO_PRESERVING_FUNCTIONS:
        _pass(a, node, node.args[0])
    elif node.op == "call_function" and node.target is torch.flatten:
        _visit_flatten(a, node, node.args[0])
    elif node.op == "call_method" and node.target in ZERO_PRESERVING_METHODS:
        _pass(a, node, node.args[0])
    elif node.op == "call_method" and node.target in ("flatten", "view", "reshape"):
        _visit_flatten(a, node, node.args[0])
    elif node.op == "call_method" and node.target == "mean":
        _visit_mean(a, node)
    elif node.op == "call_method" and node.target in SHAPE_QUERIES:
        return
    elif node.op == "call_function" and node.target is getattr and node.args[1] in ("shape", "dtype", "device"):
        return
    elif node.op == "call_function" and node.target is operator.getitem and _is_shape(node.args[0]):
        return
    else:  # unknown: nothing it touches may be pruned
        a.fix((node.args, node.kwargs))
        a.fresh(node)


def _is_shape(node: Any) -> bool:
    return isinstance(node, fx.Node) and (node.target in SHAPE_QUERIES or node.target is getattr)


def _pass(a: _Analysis, node: fx.Node, source: Any) -> None:
    value = a.values.get(source) if isinstance(source, fx.Node) else None
    if value is None:
        a.fresh(node)
        return
    in_shape, out_shape = _shape(source), _shape(node)
    if in_shape is None or out_shape is None or len(in_shape) != len(out_shape) or in_shape[value.dim] != out_shape[value.dim]:
        a.fix(source)
        a.fresh(node)
        return
    a.values[node] = value


def _visit_join(a: _Analysis, node: fx.Node) -> None:
    inputs = [n for n in node.args if isinstance(n, fx.Node) and n in a.values]
    out_shape = _shape(node)
    same = all(_shape(n) == out_shape and a.values[n].dim == a.values[inputs[0]].dim
               and a.values[n].factor == 1 for n in inputs)
    tensors = [n for n in node.args if isinstance(n, fx.Node)]
    shifted = node.target not in MULTIPLYING and len(tensors) != len(node.args)  # x + 1 maps 0 to 1
    if not inputs or not same or len(inputs) != len(tensors) or shifted or node.kwargs:
        a.fix(node.args)
        a.fresh(node)
        return
    for other in inputs[1:]:
        a.join(a.values[inputs[0]].space, a.values[other].space)
    a.values[node] = a.values[inputs[0]]


def _visit_flatten(a: _Analysis, node: fx.Node, source: Any) -> None:
    """(B, C, *spatial) -> (B, C * prod(spatial)): channel c becomes a block of `factor` features."""
    value = a.values.get(source) if isinstance(source, fx.Node) else None
    in_shape, out_shape = _shape(source), _shape(node)
    if (value is not None and in_shape is not None and out_shape is not None and value.dim == 1
            and out_shape[:2] == in_shape[:2]):  # flatten(start_dim >= 2) or a no-op
        a.values[node] = value
        return
    if (value is None or in_shape is None or out_shape is None or len(out_shape) != 2 or value.dim != 1
            or value.factor != 1 or out_shape[0] != in_shape[0] or out_shape[1] != _numel(in_shape[1:])):
        a.fix(source)
        a.fresh(node)
        return
    a.values[node] = _Value(value.space, 1, _numel(in_shape[2:]))


def _visit_mean(a: _Analysis, node: fx.Node) -> None:
    """x.mean(dims) over spatial dims only keeps the channel index (global average pooling)."""
    source = node.args[0]
    value = a.values.get(source) if isinstance(source, fx.Node) else None
    in_shape, out_shape = _shape(source), _shape(node)
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    dims = (dims,) if isinstance(dims, int) else tuple(dims or ())
    keepdim = node.kwargs.get("keepdim", node.args[2] if len(node.args) > 2 else False)
    if (value is None or in_shape is None or out_shape is None or value.dim != 1 or value.factor != 1 or not dims
            or any(d % len(in_shape) <= 1 for d in dims) or keepdim):
        a.fix(node.args)
        a.fresh(node)
        return
    a.values[node] = value


def _numel(shape: tuple[int, ...]) -> int:
    total = 1
    for s in shape:
        total *= s
    return total


def _visit_module(a: _Analysis, node: fx.Node, module: nn.Module) -> None:
    name = str(node.target)
    a.calls[name] = a.calls.get(name, 0) + 1
    kind = type_before_parametrizations(module)
    source = node.args[0] if node.args else None
    value = a.values.get(source) if isinstance(source, fx.Node) else None
    if issubclass(kind, CONVS + (nn.Linear,)):
        _visit_layer(a, node, module, name, value)
    elif issubclass(kind, NORMS) and value is not None and value.dim == 1 and value.factor == 1 and len(node.args) == 1:
        a.roles.append(("passthrough", name, value.space, 1))
        a.values[node] = value
    elif issubclass(kind, ZERO_PRESERVING_MODULES) and len(node.args) == 1:
        _pass(a, node, source)
    elif issubclass(kind, nn.Flatten) and len(node.args) == 1:
        _visit_flatten(a, node, source)
    else:
        a.fix((node.args, node.kwargs))
        a.fresh(node)


def _visit_layer(a: _Analysis, node: fx.Node, module: nn.Module, name: str, value: _Value | None) -> None:
    """Conv / Linear: consumer of its input space, producer of a new output space (depthwise convs
    keep the space and are passthrough members)."""
    is_linear = isinstance(module, nn.Linear)
    out_shape, in_shape = _shape(node), _shape(node.args[0]) if node.args else None
    channel_dim = (len(in_shape) - 1 if is_linear else 1) if in_shape is not None else -1
    usable = (value is not None and len(node.args) == 1 and not node.kwargs and value.dim == channel_dim
              and out_shape is not None)
    groups = getattr(module, "groups", 1)
    if usable and not is_linear and groups > 1:
        if groups == module.in_channels == module.out_channels and value.factor == 1:
            a.roles.append(("passthrough", name, value.space, 1))
            a.values[node] = value
            return
        usable = False
    if not usable or (is_linear and len(out_shape) != 2 and value.factor != 1):
        a.fix(node.args)
        a.fresh(node)
        return
    a.roles.append(("consumer", name, value.space, value.factor))
    out_dim = len(out_shape) - 1 if is_linear else 1
    space = a.new_space(out_shape[out_dim])
    a.roles.append(("producer", name, space, 1))
    a.values[node] = _Value(space, out_dim)


def _collect(a: _Analysis) -> list[Group]:
    """Prunable groups (not fixed, no layer called twice), producers first seen order."""
    for role, name, space, factor in a.roles:
        if a.calls.get(name, 0) > 1:
            a.spaces[a.find(space)].fixed = True
    groups: dict[int, Group] = {}
    for role, name, space, factor in a.roles:
        root = a.find(space)
        if a.spaces[root].fixed:
            continue
        group = groups.setdefault(root, Group(a.spaces[root].size))
        if role == "producer":
            group.producers.append(name)
        elif role == "passthrough":
            group.passthrough.append(name)
        else:
            group.consumers.append((name, factor))
    return [g for g in groups.values() if g.producers]
