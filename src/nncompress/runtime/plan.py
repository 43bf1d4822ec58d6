"""From a converted, statically quantized model to the engine's integer program (one step per node).

The model is traced with torch.fx (Linear / Conv layers and torch.nn modules are leaves) and each
node gets a `Step` (ops.py) and a `QInfo` saying what its integers mean. Where a value must become
8-bit codes, the grid comes from the layer that consumes it: an output scale S_Y / Z_Y is the
*next* quantized layer's input quantizer, found by walking forward through grid-preserving nodes
(ReLU, max / average pool, flatten, reshape, identity, dropout). So
- the model input is quantized onto the first layer's grid;
- a layer's int32 accumulator is requantized onto the next layer's grid, ReLU fused when a ReLU
  is its only consumer; an accumulator that reaches only the output, or a residual add (directly or
  through ReLU), stays wide;
- a residual add writes codes on the grid of the layer after it, or stays wide when it also feeds
  the next residual add (a skip connection: the precision highway, `Planner.feeds_add`);
- a layer whose input arrives on another grid (or wide) requantizes it first.
Anything else raises `UnsupportedModelError` naming the operation and the node.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from ..quant.activation import input_quantizer
from .layers import LAYER_TYPES, IntegerLayer, Requant
from .ops import Add, Apply, AvgPool, Clamp, LayerStep, Output, Passthrough, QuantizeInput, Step
from .qvalue import Grid, QInfo, UnsupportedModelError

PASS_MODULES = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)
MODULE_KINDS = ((nn.ReLU, "relu"), (PASS_MODULES, "pass"), ((nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d), "maxpool"),
                ((nn.AvgPool2d, nn.AdaptiveAvgPool2d), "avgpool"), (nn.Flatten, "flatten"))
FUNCTION_KINDS = {F.relu: "relu", torch.relu: "relu", F.max_pool2d: "maxpool", torch.max_pool2d: "maxpool",
                  F.adaptive_avg_pool2d: "avgpool", torch.flatten: "flatten", operator.add: "add", operator.iadd: "add",
                  torch.add: "add", operator.getitem: "shape"}
METHOD_KINDS = {"relu": "relu", "flatten": "flatten", "view": "reshape", "reshape": "reshape", "add": "add",
                "size": "shape", "dim": "shape", "contiguous": "pass"}
#: Nodes that commute with a monotone code map (clamping included), so the codes may take the grid of
#: the layer after them. An average pool does not (the mean of clamped values is not the clamped
#: mean, and a pool's input spans a wider range than its calibrated output): it runs on wide values.
GRID_PRESERVING = {"relu", "pass", "maxpool", "flatten", "reshape"}


class EngineTracer(torch.fx.Tracer):
    """Linear / Conv layers (parametrized or not) and torch.nn modules are leaves."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, LAYER_TYPES) or input_quantizer(m) is not None or super().is_leaf_module(m, qualname)


def trace(model: nn.Module) -> torch.fx.GraphModule:
    try:
        graph = EngineTracer().trace(model)
    except Exception as error:  # noqa: BLE001 - any tracing failure is reported the same way
        raise UnsupportedModelError(f"torch.fx cannot trace {type(model).__name__}: {error}") from error
    return torch.fx.GraphModule(model, graph)


@dataclass
class Program:
    """The traced graph, one step per node and what every node's integers mean."""

    graph_module: torch.fx.GraphModule
    steps: dict[str, Step]
    input_shape: tuple[int, ...]

    @property
    def layers(self) -> dict[str, str]:
        """Node name -> layer name (the module's qualified name) of every integer layer."""
        return {node.name: str(node.target) for node in self.graph_module.graph.nodes
                if isinstance(self.steps[node.name], LayerStep)}


class Planner:
    """Assigns a step and a QInfo to every node, in topological order."""

    def __init__(self, model: nn.Module, example_input: torch.Tensor):
        self.gm = trace(model).eval()
        self.modules = dict(self.gm.named_modules())
        ShapeProp(self.gm).propagate(example_input)
        self.infos: dict[str, QInfo | None] = {}
        self.fused: set[str] = set()
        self.input_shape = tuple(example_input.shape[1:])

    def build(self) -> Program:
        inputs = [node.name for node in self.gm.graph.nodes if node.op == "placeholder"]
        if len(inputs) != 1:
            raise UnsupportedModelError(f"the integer engine runs models with one input, this one has {inputs}")
        steps = {}
        for node in self.gm.graph.nodes:
            step = self.lower(node)
            self.infos[node.name] = step.info
            steps[node.name] = step
        return Program(self.gm, steps, self.input_shape)

    # -- what a node is -------------------------------------------------------------------------
    def describe(self, node: torch.fx.Node) -> str:
        if node.op == "call_module":
            return f"module {type(self.modules[node.target]).__name__} ({node.target!r})"
        if node.op == "call_function":
            return f"function {getattr(node.target, '__module__', '')}.{getattr(node.target, '__name__', node.target)}"
        return f"{node.op} {node.target!r}"

    def kind(self, node: torch.fx.Node) -> str:
        if node.op in ("placeholder", "output"):
            return "input" if node.op == "placeholder" else "output"
        if node.op == "call_module":
            module = self.modules[node.target]
            if isinstance(module, LAYER_TYPES) or input_quantizer(module) is not None:
                return "layer"
            kind = next((k for types, k in MODULE_KINDS if isinstance(module, types)), None)
        elif node.op == "call_function":
            kind = FUNCTION_KINDS.get(node.target)
        else:
            kind = METHOD_KINDS.get(node.target) if node.op == "call_method" else None
        if kind is None:
            raise UnsupportedModelError(f"the integer engine does not support {self.describe(node)} "
                                        f"at node {node.name!r}")
        return kind

    def source(self, node: torch.fx.Node, index: int = 0) -> QInfo:
        arg = node.args[index] if len(node.args) > index else None
        info = self.infos.get(arg.name) if isinstance(arg, torch.fx.Node) else None
        if info is None:
            raise UnsupportedModelError(f"{self.describe(node)} at node {node.name!r}: argument {index} is not a "
                                        "quantized tensor")
        return info

    # -- where the codes go ---------------------------------------------------------------------
    def first_reached(self, node: torch.fx.Node, target: str, through: set[str] | frozenset[str]) -> torch.fx.Node | None:
        """The first node of kind `target` reached from `node`'s users, breadth first, walking only
        through nodes of the kinds in `through`; None if there is none."""
        queue, seen = list(node.users), set()
        while queue:
            user = queue.pop(0)
            if user.name in seen:
                continue
            seen.add(user.name)
            kind = self.kind(user)
            if kind == target:
                return user
            if kind in through:
                queue.extend(user.users)
        return None

    def consumer_grid(self, node: torch.fx.Node, through: frozenset[str] = frozenset()) -> Grid | None:
        """The input grid of the first quantized layer reached through grid-preserving nodes (and
        nodes of the kinds in `through`)."""
        layer = self.first_reached(node, "layer", GRID_PRESERVING | through)
        return None if layer is None else Grid.of_layer(self.modules[layer.target], f"layer {layer.target!r}")

    def feeds_add(self, node: torch.fx.Node) -> bool:
        """True when `node`'s value reaches a residual add directly or through ReLU / identity nodes:
        it is a skip connection. The engine then keeps it wide (the precision highway, Park et al.,
        ECCV 2018), as the fake-quantized model keeps it in float: a sum stays int32 with 16
        fraction bits below the next grid's step, a layer output stays its int32 accumulator (scale
        S_X S_W), and only the layers reading it round it onto their own grids. On the next layer's
        grid instead, ResNet-20's layer inputs moved by up to 11 LSB from the model's at 8 bits, and
        a 2-bit model lost 6 points in the engine. Pools and reshapes end the search (a wide
        per-channel value is not reshaped)."""
        return self.first_reached(node, "add", {"relu", "pass"}) is not None

    def fuse_relu(self, node: torch.fx.Node) -> bool:
        """True (and the ReLU becomes a pass-through) when a ReLU is the only consumer of `node`."""
        current = node
        while len(current.users) == 1:
            user = next(iter(current.users))
            kind = self.kind(user)
            if kind == "relu":
                self.fused.add(user.name)
                return True
            if kind != "pass":
                return False
            current = user
        return False

    # -- one node -------------------------------------------------------------------------------
    def lower(self, node: torch.fx.Node) -> Step:
        kind = self.kind(node)
        if kind == "input":
            grid = self.consumer_grid(node)
            if grid is None:
                raise UnsupportedModelError(f"the model input {node.name!r} reaches no statically quantized layer")
            return QuantizeInput(grid, grid.info())
        if kind == "output":
            return Output()
        if kind == "layer":
            return self.lower_layer(node)
        if kind == "add":
            return self.lower_add(node)
        if kind == "shape" and not (node.target is operator.getitem and self.is_tensor_arg(node)):
            return Apply(self.function(node))  # size(), dim(), indexing a shape: not tensors
        source = self.source(node)
        if kind == "relu":
            return Passthrough(source) if node.name in self.fused else Clamp(source.zero_point, source)
        if kind == "pass":
            return Passthrough(source)
        if kind == "maxpool":
            if node.op == "call_module" and self.modules[node.target].return_indices:
                raise UnsupportedModelError(f"{self.describe(node)}: max pooling with return_indices")
            self.check_spatially_uniform(node, source)
            return Apply(self.function(node), source)
        if kind == "avgpool":
            self.check_spatially_uniform(node, source)
            return self.lower_avgpool(node, source)
        return self.lower_reshape(node, source, kind)

    def is_tensor_arg(self, node: torch.fx.Node) -> bool:
        arg = node.args[0] if node.args else None
        return isinstance(arg, torch.fx.Node) and self.infos.get(arg.name) is not None

    def lower_layer(self, node: torch.fx.Node) -> LayerStep:
        if len(node.args) != 1 or node.kwargs:
            raise UnsupportedModelError(f"layer {node.target!r}: called with extra arguments")
        layer = IntegerLayer.from_module(self.modules[node.target], str(node.target))
        source = self.source(node)
        same = source.kind == "codes" and source.grid is not None and source.grid.same(layer.grid)
        pre = None if same else Requant.onto(source, layer.grid)
        grid = self.consumer_grid(node)
        if grid is None or self.feeds_add(node):  # logits, or a skip connection: stays wide
            return LayerStep(layer, pre, None, layer.acc_info())
        return LayerStep(layer, pre, Requant.onto(layer.acc_info(), grid, self.fuse_relu(node)), grid.info())

    def lower_add(self, node: torch.fx.Node) -> Add:
        if len(node.args) != 2 or node.kwargs or not all(isinstance(a, torch.fx.Node) for a in node.args):
            raise UnsupportedModelError(f"node {node.name!r}: only the sum of two tensors is supported")
        a, b = self.source(node, 0), self.source(node, 1)
        grid = self.consumer_grid(node)
        if grid is not None:
            return Add.build(a, b, grid, self.fuse_relu(node), wide=self.feeds_add(node))
        grid = self.consumer_grid(node, frozenset({"avgpool"}))
        if grid is None:
            raise UnsupportedModelError(f"node {node.name!r}: a residual add must feed a quantized layer (its output "
                                        "scale derives from that layer's input quantizer)")
        return Add.build(a, b, grid, self.fuse_relu(node), wide=True)

    def lower_avgpool(self, node: torch.fx.Node, source: QInfo) -> AvgPool:
        in_size = tuple(node.args[0].meta["tensor_meta"].shape[-2:])
        if node.op == "call_module" and isinstance(self.modules[node.target], nn.AvgPool2d):
            pool = self.modules[node.target]
            pads = (pool.padding,) * 2 if isinstance(pool.padding, int) else tuple(pool.padding)
            if any(pads) or pool.ceil_mode or pool.divisor_override is not None:
                raise UnsupportedModelError(f"{self.describe(node)}: only average pooling without padding, ceil_mode "
                                            "or divisor_override runs in integers")
            kernel = _pair(pool.kernel_size)
            return AvgPool(kernel, _pair(pool.stride if pool.stride is not None else kernel), in_size, source)
        size = self.modules[node.target].output_size if node.op == "call_module" else node.args[1]
        out = tuple(o if o is not None else i for o, i in zip(_pair(size), in_size))
        if in_size[0] % out[0] or in_size[1] % out[1]:
            raise UnsupportedModelError(f"{self.describe(node)}: adaptive average pooling from {in_size} to {out} "
                                        "has windows of different sizes")
        kernel = (in_size[0] // out[0], in_size[1] // out[1])
        return AvgPool(kernel, kernel, in_size, source)

    def lower_reshape(self, node: torch.fx.Node, source: QInfo, kind: str) -> Apply:
        fn = self.function(node)
        if source.per_tensor:
            return Apply(fn, source.with_scale(source.scale.flatten()[:1].reshape(())))
        if kind != "flatten":
            raise UnsupportedModelError(f"{self.describe(node)} at node {node.name!r}: reshaping a per-channel "
                                        "accumulator is not supported (requantize it first)")
        shape = tuple(node.args[0].meta["tensor_meta"].shape)
        scale_map = fn(source.scale.expand(1, *shape[1:]), *node.args[1:], **node.kwargs)
        if scale_map.shape[0] != 1:
            raise UnsupportedModelError(f"node {node.name!r}: flattening the batch dimension of an accumulator")
        return Apply(fn, source.with_scale(scale_map))

    def function(self, node: torch.fx.Node):
        if node.op == "call_module":
            return self.modules[node.target]
        if node.op == "call_method":
            name = node.target
            return lambda value, *args, **kwargs: getattr(value, name)(*args, **kwargs)
        return node.target

    def check_spatially_uniform(self, node: torch.fx.Node, source: QInfo) -> None:
        if source.scale.dim() > 2 and any(s != 1 for s in source.scale.shape[2:]):
            raise UnsupportedModelError(f"{self.describe(node)} at node {node.name!r}: pooling needs one scale "
                                        "per channel")


def _pair(value) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else tuple(value)
