"""Export a quantized (simulated or converted) model to standard ONNX: QDQ or QOperator.

    >>> import torch, nncompress as nc
    >>> from nncompress.export.onnx import export_onnx
    >>> net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    >>> _ = nc.quantize_(net, nc.LinearQuant(weight_bits=8, act_bits=8), data=[torch.randn(64, 8)])
    >>> result = export_onnx(nc.convert_(net.eval()), torch.randn(2, 8))
    >>> sorted({n.op_type for n in result.model.graph.node} & {"QuantizeLinear", "DequantizeLinear", "Gemm"})
    ['DequantizeLinear', 'Gemm', 'QuantizeLinear']

How (one pass over the torch.fx graph, built with `onnx.helper`, no torch.onnx):
- Linear / Conv layers are leaves; their weights, biases and input quantizers are read from the
  model's own transforms (`layers.py`): int8 codes with per-output-channel scales (axis 0),
  int32 biases on S_x S_w, static uint8 activations as QuantizeLinear / DequantizeLinear (QDQ) or
  QLinearConv / MatMulInteger + requant (QOperator), dynamic activations as DynamicQuantizeLinear
  (per tensor) or per-row QuantizeLinear (per token) + MatMulInteger.
- Where codes go (as in the integer engine's planner): a layer's output is put on the grid of the
  next quantized layer when only grid-preserving ops (ReLU, max pool, reshapes) lie between; this is
  exact (those ops commute with r -> Q(r)) and lets ONNX Runtime fuse Conv + Q into QLinearConv.
- With `calibration` batches, the operands of a residual add whose sum is quantized anyway are put
  on calibrated 8-bit grids too (min-max), so ONNX Runtime runs the block in int8 (QLinearAdd);
  this adds one rounding per operand that our model does not have (reported as `extra_grids`).
- Anything else raises a UserError naming the op and the layer.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.fx
from torch import nn

from ..quant.activation import input_quantizer
from ..quant.primitives import IntSpec, choose_qparams
from ..validate import UserError, check_choice
from .graph import GraphBuilder, Grid, GridValues, Value, cpu_has_vnni, require_onnx, u8s8_saturates
from .layers import WEIGHT_RANGES, input_quant
from .splice import export_spliced
from .ops import FUNCTION_OPS, LAYER_TYPES, METHOD_OPS, MODULE_OPS
from ..quant.attention import SplitAttention

FORMATS = ("qdq", "qoperator")


@dataclass
class OnnxExport:
    """What `export_onnx` wrote: the ModelProto, and how each layer went out."""

    model: Any
    format: str
    weight_range: str
    layers: dict[str, dict] = field(default_factory=dict)
    extra_grids: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    path: str | None = None
    inputs: list[str] = field(default_factory=lambda: ["input"])  # the graph's input names, in order

    def summary(self) -> dict:
        ops: dict[str, int] = {}
        for node in self.model.graph.node:
            ops[node.op_type] = ops.get(node.op_type, 0) + 1
        return {"path": self.path, "format": self.format, "weight_range": self.weight_range, "layers": self.layers,
                "extra_grids": self.extra_grids, "notes": self.notes, "ops": ops}


class ExportTracer(torch.fx.Tracer):
    """Linear / Conv layers, layers with an input quantizer and SplitAttention are leaves."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return (isinstance(m, (*LAYER_TYPES, SplitAttention)) or input_quantizer(m) is not None
                or super().is_leaf_module(m, qualname))


def trace(model: nn.Module) -> torch.fx.GraphModule:
    try:
        return torch.fx.GraphModule(model, ExportTracer().trace(model))
    except UserError:
        raise
    except Exception as error:  # noqa: BLE001 - any tracing failure is reported the same way
        raise UserError(f"ONNX export traces the model with torch.fx, which fails on {type(model).__name__}: "
                        f"{type(error).__name__}: {error}") from error


class _Recorder(torch.fx.Interpreter):
    """Runs the graph and keeps every node's shape (tensors) or value (ints, tuples), and min / max of
    the nodes in `ranges`."""

    def __init__(self, gm: torch.fx.GraphModule, ranges: dict[str, list] | None = None):
        super().__init__(gm)
        self.values: dict[str, Any] = {}
        self.ranges = ranges or {}

    def run_node(self, n: torch.fx.Node) -> Any:
        out = super().run_node(n)
        self.values[n.name] = _summary(out)
        if n.name in self.ranges and torch.is_tensor(out):
            self.ranges[n.name].append((float(out.min()), float(out.max())))
        return out


class _Shape(tuple):
    """A tensor's recorded shape (kept apart from tuples of ints)."""


def _summary(value: Any) -> Any:
    if torch.is_tensor(value):
        return _Shape(value.shape)
    if isinstance(value, (tuple, list)):
        return type(value)(_summary(v) for v in value) if not isinstance(value, torch.Size) else tuple(value)
    return value


class _Dynamic:
    """A Python value (a size) that depends on the batch size: only reshapes may use it."""

    def __init__(self, value: Any):
        self.value = value


class Exporter(GridValues):
    def __init__(self, model: nn.Module, example: torch.Tensor, fmt: str, weight_range: str,
                 calibration: list | None):
        super().__init__(GraphBuilder(name=type(model).__name__), fmt, weight_range)
        self.gm = trace(model.eval())
        self.modules = dict(self.gm.named_modules())
        self.nodes = list(self.gm.graph.nodes)
        self.env: dict[str, Any] = {}
        with torch.no_grad():
            one = example[:1]
            self.run1 = self._record(one)
            self.run2 = self._record(torch.cat([one, one]))
        self.kinds = {n.name: self.kind(n) for n in self.nodes}
        self.grids = self.plan(tolerate_adds=bool(calibration))
        self.extra_grids = self.calibrate(calibration) if calibration else []

    # -- tracing facts ------------------------------------------------------------------------
    def _record(self, x: torch.Tensor) -> dict[str, Any]:
        recorder = _Recorder(self.gm)
        recorder.run(x)
        return recorder.values

    def describe(self, node: torch.fx.Node) -> str:
        stack = node.meta.get("nn_module_stack") or {}
        owner = list(stack)[-1] if stack else ""
        if node.op == "call_module":
            return f"op {type(self.modules[node.target]).__name__} in layer {node.target!r}"
        op = getattr(node.target, "__name__", str(node.target))
        return f"op {op!r} ({node.op}) at node {node.name!r} in layer {owner or type(self.gm).__name__!r}"

    def where(self, node: torch.fx.Node) -> str:
        return str(node.target) if node.op == "call_module" else node.name

    def shape(self, node: torch.fx.Node) -> list[int]:
        """The node's output shape with the batch-dependent dimension as -1."""
        a, b = self.run1[node.name], self.run2[node.name]
        if not isinstance(a, _Shape):
            raise UserError(f"{self.describe(node)}: expected a tensor")
        dims = [-1 if x != y else x for x, y in zip(a, b)]
        if dims.count(-1) > 1:
            raise UserError(f"{self.describe(node)}: two dimensions depend on the batch size; cannot export")
        return dims

    def shape_const(self, node: torch.fx.Node) -> str:
        return self.g.const(np.array(self.shape(node), np.int64), "shape")

    def kind(self, node: torch.fx.Node) -> str:
        if node.op in ("placeholder", "output", "get_attr"):
            return node.op
        recorded = self.run1.get(node.name)
        if node.op != "call_module" and not isinstance(recorded, _Shape) and not _has_shape(recorded):
            return "static"  # sizes and arithmetic on them: evaluated at export time
        if node.op == "call_module":
            module = self.modules[node.target]
            if input_quantizer(module) is not None and not isinstance(module, LAYER_TYPES):
                raise UserError(f"{self.describe(node)}: its input is quantized, but only Linear / Conv layers export")
            for types, _, kind in MODULE_OPS:
                if isinstance(module, types):
                    return kind
        elif node.op == "call_function" and node.target in FUNCTION_OPS:
            return FUNCTION_OPS[node.target][1]
        elif node.op == "call_method" and node.target in METHOD_OPS:
            return METHOD_OPS[node.target][1]
        hint = " (call nc.unfuse_attention_(model) first)" if "MultiheadAttention" in self.describe(node) else ""
        raise UserError(f"ONNX export does not support {self.describe(node)}{hint}")

    # -- where codes go -----------------------------------------------------------------------
    def static_grid(self, layer_node: torch.fx.Node) -> Grid | None:
        module = self.modules[layer_node.target]
        iq = input_quant(module, str(layer_node.target))
        return iq.grid if iq.kind == "static" and iq.smooth is None else None

    def plan(self, tolerate_adds: bool, seed: dict[str, Grid] | None = None) -> dict[str, Grid]:
        """Node -> the grid its output goes onto (see the module docstring), users first. With
        `tolerate_adds` a value read by layers of one grid and by residual adds goes onto that grid."""
        grids: dict[str, Grid] = dict(seed or {})
        transparent: set[str] = set()  # preserving ops that only lead to residual adds (tolerate_adds)
        for node in reversed(self.nodes):
            if node.name in grids or self.kinds[node.name] in ("output", "static", "get_attr") \
                    or not isinstance(self.run1[node.name], _Shape):
                continue
            demands, floats = set(), 0
            for user in node.users:
                kind = self.kinds[user.name]
                first = bool(user.args) and user.args[0] is node
                if kind == "layer" and first and self.static_grid(user) is not None:
                    demands.add(self.static_grid(user))
                elif kind == "preserve" and first and user.name in grids:
                    demands.add(grids[user.name])
                elif tolerate_adds and (kind == "add" or user.name in transparent):
                    continue
                elif kind != "static":
                    floats += 1
            if len(demands) == 1 and not floats:
                grids[node.name] = demands.pop()
            elif tolerate_adds and not demands and not floats and node.users and self.kinds[node.name] == "preserve":
                transparent.add(node.name)
        return grids

    def calibrate(self, calibration: list) -> list[str]:
        """Calibrated uint8 grids (min-max over `calibration`) for values ONNX Runtime needs as codes
        to stay in int8 and that have none yet: the operands of residual adds and the input of an
        average pool whose output is on a grid (e.g. the last conv of a residual block)."""
        extra: list[str] = []
        for _ in range(4):  # a new grid can make the add before it quantized too
            wanted: dict[str, list] = {}
            for node in self.nodes:
                kind = self.kinds[node.name]
                pooled = kind == "float" and node.op == "call_module" and isinstance(
                    self.modules[node.target], (nn.AvgPool2d, nn.AdaptiveAvgPool2d))
                if node.name not in self.grids or not (kind == "add" or pooled):
                    continue
                for arg in node.args[:2] if kind == "add" else node.args[:1]:
                    if isinstance(arg, torch.fx.Node) and arg.name not in self.grids \
                            and isinstance(self.run1[arg.name], _Shape) and not self._grid_from_source(arg):
                        wanted[arg.name] = []
            if not wanted:
                break
            recorder = _Recorder(self.gm, wanted)
            with torch.no_grad():
                for batch in calibration:
                    recorder.run(batch[0] if isinstance(batch, (tuple, list)) else batch)
            spec = IntSpec(bits=8, signed=False, symmetric=False)
            for name, ranges in wanted.items():
                lo, hi = min(r[0] for r in ranges), max(r[1] for r in ranges)
                scale, zero_point = choose_qparams(torch.tensor(lo), torch.tensor(hi), spec)
                self.grids[name] = Grid(float(scale), int(zero_point), "uint8")
            self.grids = self.plan(True, self.grids)  # carry the new grids back through preserving ops
            extra += list(wanted)
        return extra

    def _grid_from_source(self, node: torch.fx.Node) -> bool:
        """Give `node` (and the preserving ops before it) the grid of the value it preserves, if any."""
        chain = [node]
        while self.kinds[chain[-1].name] == "preserve" and isinstance(chain[-1].args[0], torch.fx.Node):
            source = chain[-1].args[0]
            if source.name in self.grids:
                for n in chain:
                    self.grids[n.name] = self.grids[source.name]
                return True
            chain.append(source)
        return False

    def tensor_arg(self, node: torch.fx.Node, i: int) -> Value:
        value = self.env[node.args[i].name] if isinstance(node.args[i], torch.fx.Node) else None
        if not isinstance(value, Value):
            raise UserError(f"{self.describe(node)}: argument {i} is not a tensor")
        return value

    def args(self, node: torch.fx.Node) -> tuple:
        def fetch(n: torch.fx.Node) -> Any:
            value = self.env[n.name]
            if isinstance(value, _Dynamic):
                raise UserError(f"{self.describe(node)} uses a batch-dependent size; only reshapes may")
            return value
        return torch.fx.node.map_arg(node.args, fetch)

    def const_args(self, node: torch.fx.Node) -> tuple:
        return self.args(node)

    # -- the pass -----------------------------------------------------------------------------
    def run(self, input_name: str = "input") -> Any:
        for node in self.nodes:
            kind = self.kinds[node.name]
            if kind == "placeholder":
                shape = ["batch" if d == -1 else d for d in self.shape(node)]
                value: Any = Value(float=self.g.add_input(input_name, np.float32, shape))
            elif kind == "output":
                self._outputs(node)
                continue
            elif kind == "get_attr":
                value = Value(float=self.g.const(_attr(self.gm, node.target).detach().float().numpy(), node.target))
            elif kind == "static":
                a, b = self.run1[node.name], self.run2[node.name]
                value = a if a == b else _Dynamic(a)
            else:
                value = self._handler(node)(self, node)
            if isinstance(value, Value) and node.name in self.grids:
                value = self.to_grid(value, self.grids[node.name], self.where(node))
            self.env[node.name] = value
        return self.g.model(doc=json.dumps({"format": self.fmt, "weight_range": self.weight_range}))

    def _handler(self, node: torch.fx.Node):
        if node.op == "call_module":
            module = self.modules[node.target]
            return next(h for types, h, _ in MODULE_OPS if isinstance(module, types))
        return (FUNCTION_OPS if node.op == "call_function" else METHOD_OPS)[node.target][0]

    def _outputs(self, node: torch.fx.Node) -> None:
        result = node.args[0]
        items = list(result) if isinstance(result, (tuple, list)) else [result]
        for i, item in enumerate(items):
            if not isinstance(item, torch.fx.Node) or not isinstance(self.env.get(item.name), Value):
                raise UserError(f"ONNX export: model output {i} is not a tensor")
            shape = ["batch" if d == -1 else d for d in self.shape(item)]
            name = "output" if len(items) == 1 else f"output_{i}"
            self.g.add_output(self.as_float(self.env[item.name], "output"), name, np.float32, shape)


def _has_shape(value: Any) -> bool:
    return isinstance(value, (tuple, list)) and any(isinstance(v, _Shape) for v in value)


def _attr(gm: nn.Module, target: str) -> torch.Tensor:
    value: Any = gm
    for part in target.split("."):
        value = getattr(value, part)
    return value


def default_weight_range() -> tuple[str, str]:
    """The weight range for this machine and why (see layers.WEIGHT_RANGES): the 8-bit codes
    unless this ONNX Runtime's uint8 x int8 kernels saturate (probed with worst-case codes)."""
    if not u8s8_saturates():
        return "full", ("weights keep their exact 8-bit codes: a worst-case probe (255 x 127 in every product) of this "
                        f"machine's ONNX Runtime u8s8 kernels is exact (VNNI: {cpu_has_vnni()})")
    return "reduce", ("this machine's ONNX Runtime u8s8 kernels saturate (AVX2 without VNNI adds pairs of products in "
                      "int16), so weights are re-quantized to 7 bits ([-63, 63], reduce_range); pass "
                      "weight_range='uint8' for the exact codes on slower u8u8 kernels")


def export_onnx(model: nn.Module, example: torch.Tensor, path: str | Path | None = None, *, format: str = "qdq",
                weight_range: str = "auto", calibration: list | None = None, check: bool = True) -> OnnxExport:
    """Export `model` (quantized with nncompress, converted or not, or plain float) to ONNX.

    `example`: one input batch (its shape, batch size free): a tensor (traced by torch.fx), or a dict
    of tensors (`model(**example)`, e.g. a Hugging Face model's input_ids / attention_mask) or a tuple
    (`model(*example)`), exported by torch.onnx with our int8 Linear layers spliced in (`splice.py`). `format`: "qdq" (QuantizeLinear /
    DequantizeLinear around float ops) or "qoperator" (QLinearConv / MatMulInteger + requant).
    `weight_range`: "auto" (this CPU's choice, said in `notes`), "full", "reduce" or "uint8" (see
    `layers.WEIGHT_RANGES`). `calibration`: input batches giving ranges for the residual adds'
    operands, so that ONNX Runtime runs residual blocks in int8 (without it they stay float there).
    Writes `path` when given and checks the file with `onnx.checker`.
    """
    require_onnx()
    import onnx

    check_choice("format", format, FORMATS)
    check_choice("weight_range", weight_range, ("auto", *WEIGHT_RANGES))
    notes, auto_note = [], None
    if weight_range == "auto":
        weight_range, why = default_weight_range()
        auto_note = f"weight_range={weight_range}: {why}"
    if torch.is_tensor(example):
        exporter = Exporter(model, example, format, weight_range, calibration)
        proto, layers, extra_grids, inputs = exporter.run(), exporter.layers, exporter.extra_grids, ["input"]
    elif isinstance(example, (dict, tuple, list)):
        proto, layers, inputs, unused = export_spliced(model, example, format, weight_range)
        extra_grids = []
        notes.append(f"several inputs ({', '.join(inputs)}): torch.onnx's float graph of the first output with our "
                     "int8 Linear layers spliced in")
        if unused:
            notes.append(f"not in the graph (the first output does not use them): {', '.join(unused)}")
    else:
        raise UserError(f"export example: a tensor, a dict of tensors (model(**example)) or a tuple of tensors, "
                        f"got {type(example).__name__}")
    if auto_note and any("written" in info["weight"] for info in layers.values()):
        notes.insert(0, auto_note)  # only where some weight goes out as int8 codes
    if check:
        onnx.checker.check_model(proto, full_check=True)
    if extra_grids:
        notes.append(f"{len(extra_grids)} tensors put on calibrated uint8 grids so ONNX Runtime stays in int8 "
                     f"(residual-add operands, pool inputs; one rounding each that the model does not have): "
                     f"{', '.join(extra_grids)}")
    floats = [n for n, info in layers.items() if info["weight"].startswith("float")]
    if floats and any(info["input"] != "none" for info in layers.values()):
        notes.append(f"float weights (run in float): {', '.join(floats)}")
    result = OnnxExport(proto, format, weight_range, layers, extra_grids, notes, inputs=inputs)
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        onnx.save(proto, str(path))
        result.path = str(path)
    return result


__all__ = ["FORMATS", "OnnxExport", "export_onnx"]
