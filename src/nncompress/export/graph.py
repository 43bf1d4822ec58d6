"""A small builder for ONNX graphs (nodes, initializers, unique names) used by the ONNX exporter.

Everything here is plain `onnx.helper`: no torch. Tensors are numpy arrays; node names carry the
layer they come from (`layer1.0.conv1/QuantizeLinear`), so Netron and error messages point at the
PyTorch layer.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import numpy as np

try:  # optional dependency: pip install 'nncompress[onnx]'
    import onnx
    from onnx import helper, numpy_helper
except ImportError:  # pragma: no cover - exercised only without onnx
    onnx = None  # type: ignore[assignment]

from ..validate import UserError

#: The ONNX opset written: 17 has LayerNormalization and per-axis Q/DQ, and every runtime reads it.
OPSET = 17
MS_DOMAIN = "com.microsoft"


def require_onnx() -> None:
    if onnx is None:
        raise UserError("ONNX export needs the onnx package: pip install 'nncompress[onnx]' (onnx, onnxruntime)")


def elem_type(dtype: np.dtype | type) -> int:
    """numpy dtype -> ONNX TensorProto element type."""
    return int(helper.np_dtype_to_tensor_dtype(np.dtype(dtype)))


@dataclass(frozen=True)
class Grid:
    """A quantization grid of 8-bit codes: r = scale (q - zero_point), dtype uint8 or int8."""

    scale: float
    zero_point: int
    dtype: str = "uint8"

    @property
    def np_dtype(self) -> type:
        return np.uint8 if self.dtype == "uint8" else np.int8


@dataclass
class Value:
    """One exported tensor: a float ONNX tensor, and / or its 8-bit codes on `grid`."""

    float: str | None = None
    codes: str | None = None
    grid: Grid | None = None


@dataclass
class GraphBuilder:
    """Collects nodes and initializers in order; every name it hands out is unique."""

    name: str = "nncompress"
    nodes: list = field(default_factory=list)
    initializers: list = field(default_factory=list)
    inputs: list = field(default_factory=list)
    outputs: list = field(default_factory=list)
    used: set[str] = field(default_factory=set)
    ms_ops: bool = False
    _consts: dict[tuple, str] = field(default_factory=dict)

    def unique(self, base: str) -> str:
        base = base.replace("/", ".").strip(".") or "t"
        name, i = base, 1
        while name in self.used:
            name, i = f"{base}_{i}", i + 1
        self.used.add(name)
        return name

    def const(self, value: Any, name: str, dtype: Any = None) -> str:
        """An initializer holding `value` (numpy array or scalar); identical small constants are shared."""
        array = np.asarray(value, dtype=dtype) if dtype is not None else np.asarray(value)
        if array.dtype == np.float64:
            array = array.astype(np.float32)
        key = (array.dtype.str, array.shape, array.tobytes()) if array.size <= 16 else None
        if key is not None and key in self._consts:
            return self._consts[key]
        tensor_name = self.unique(name)
        self.initializers.append(numpy_helper.from_array(array.copy(order="C"), tensor_name))  # keeps 0-d scalars 0-d
        if key is not None:
            self._consts[key] = tensor_name
        return tensor_name

    def node(self, op: str, inputs: list[str], where: str, *, outputs: int = 1, domain: str = "",
             **attrs: Any) -> Any:
        """Append one node named '<where>/<op>'; returns its output name (or names if outputs > 1)."""
        node_name = self.unique(f"{where}/{op}" if where else op)
        outs = [self.unique(f"{node_name}:{i}" if outputs > 1 else node_name) for i in range(outputs)]
        if domain == MS_DOMAIN:
            self.ms_ops = True
        self.nodes.append(helper.make_node(op, inputs, outs, name=node_name, domain=domain or None, **attrs))
        return outs if outputs > 1 else outs[0]

    def add_input(self, name: str, dtype: Any, shape: list[Any]) -> str:
        self.used.add(name)
        self.inputs.append(helper.make_tensor_value_info(name, elem_type(dtype), shape))
        return name

    def add_output(self, value: str, name: str, dtype: Any, shape: list[Any]) -> str:
        """Expose `value` as graph output `name` (through an Identity so the name is free)."""
        out = self.unique(name)
        self.nodes.append(helper.make_node("Identity", [value], [out], name=self.unique(f"{out}/Identity")))
        self.outputs.append(helper.make_tensor_value_info(out, elem_type(dtype), shape))
        return out

    def live(self) -> tuple[list, list]:
        """The nodes and initializers that reach an output: a value emitted for a use that was then
        rewritten (e.g. a DequantizeLinear of codes that a Pad replaced) would still run in ONNX
        Runtime, which keeps nodes with unread outputs."""
        needed = {o.name for o in self.outputs}
        nodes = []
        for node in reversed(self.nodes):
            if any(out in needed for out in node.output):
                nodes.append(node)
                needed.update(node.input)
        return nodes[::-1], [t for t in self.initializers if t.name in needed]

    def model(self, doc: str = "") -> Any:
        nodes, initializers = self.live()
        graph = helper.make_graph(nodes, self.name, self.inputs, self.outputs, initializers)
        opsets = [helper.make_opsetid("", OPSET)] + ([helper.make_opsetid(MS_DOMAIN, 1)] if self.ms_ops else [])
        model = helper.make_model(graph, opset_imports=opsets, producer_name="nncompress", doc_string=doc)
        model.ir_version = min(model.ir_version, 9)
        return model


class GridValues:
    """Values as float tensors or as codes on a grid, with the Q / DQ nodes between them emitted once
    per (tensor, grid): the part of an exporter that the layer emitters (`layers.emit_layer`) use,
    besides `g` (a GraphBuilder), `fmt` ("qdq" / "qoperator"), `weight_range` and `layers`."""

    def __init__(self, g: GraphBuilder, fmt: str, weight_range: str):
        self.g, self.fmt, self.weight_range = g, fmt, weight_range
        self.layers: dict[str, dict] = {}  # how each layer went out (weight, input)
        self._q_cache: dict[tuple, Value] = {}
        self._dq_cache: dict[str, str] = {}

    def as_float(self, v: Value, where: str) -> str:
        if v.float is not None:
            return v.float
        if v.codes not in self._dq_cache:
            self._dq_cache[v.codes] = self.g.node("DequantizeLinear", [v.codes, *self._qparams(v.grid, where)], where)
        return self._dq_cache[v.codes]

    def _qparams(self, grid: Grid, where: str) -> list[str]:
        return [self.g.const(np.float32(grid.scale), f"{where}.scale"),
                self.g.const(np.array(grid.zero_point, grid.np_dtype), f"{where}.zero_point")]

    def to_grid(self, v: Value, grid: Grid | None, where: str) -> Value:
        """`v` as codes on `grid` (QuantizeLinear; in QDQ form followed by DequantizeLinear)."""
        if grid is None or (v.grid == grid and v.codes is not None):
            return v
        source = self.as_float(v, where)
        key = (source, grid)
        if key not in self._q_cache:
            codes = self.g.node("QuantizeLinear", [source, *self._qparams(grid, where)], where)
            value = Value(codes=codes, grid=grid)
            if self.fmt == "qdq":
                value.float = self.as_float(Value(codes=codes, grid=grid), where)
            self._q_cache[key] = value
        return self._q_cache[key]


def ort_session(model: Any, threads: int = 2, optimize: bool = True, optimized_path: str | None = None) -> Any:
    """An onnxruntime CPU session for a ModelProto or a file path, with `threads` intra-op threads."""
    try:
        import onnxruntime as ort
    except ImportError as err:  # pragma: no cover
        raise UserError("running ONNX models needs onnxruntime: pip install 'nncompress[onnx]'") from err
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # Spin while a run is in flight (fast hand-offs between ops), stop when `run` returns: a pool that
    # keeps spinning after the run holds its cores, so on a small machine another session (or PyTorch)
    # then waits for them. Measured on 2 cores, 2 threads, sessions timed in turn: ResNet-20 W8A8 batch 64
    # int8 41.0 ms (spinning) -> 8.8 (no spinning) -> 8.2 (spin, stop at return); tiny_vit batch 8
    # int8 0.38 (no spinning) -> 0.32 ms.
    options.add_session_config_entry("session.force_spinning_stop", "1")
    options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                        else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    if optimized_path:
        options.optimized_model_filepath = optimized_path
    source = model if isinstance(model, str) else model.SerializeToString()
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def cpu_has_vnni() -> bool:
    """True when this x86 CPU has VNNI (AVX512-VNNI or AVX-VNNI): int8 dot products without the
    int16 saturation of AVX2's vpmaddubsw."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("avx512_vnni", "avx_vnni"))


@functools.lru_cache(maxsize=1)
def u8s8_saturates() -> bool:
    """Probe this machine's ONNX Runtime: does uint8 x int8 accumulate with int16 saturation
    (AVX2's vpmaddubsw adds two 255 x 127 products, 64770 > 32767)? Runs one MatMulInteger and one
    QLinearConv on worst-case codes (all 255 x all 127) and compares with the exact sums."""
    k, m, n = 256, 8, 32
    x, w = np.full((m, k), 255, np.uint8), np.full((k, n), 127, np.int8)
    g = GraphBuilder()
    g.add_input("x", np.uint8, [m, k])
    g.add_output(g.node("MatMulInteger", ["x", g.const(w, "w")], "probe"), "y", np.int32, [m, n])
    exact = ort_session(g.model(), 1).run(None, {"x": x})[0]
    if not bool((exact == 255 * 127 * k).all()):
        return True
    c = GraphBuilder()
    c.add_input("x", np.uint8, [1, k, 4, 4])
    inputs = ["x", c.const(np.float32(1), "xs"), c.const(np.uint8(0), "xz"), c.const(np.full((8, k, 1, 1), 127, np.int8), "w"),
              c.const(np.ones(8, np.float32), "ws"), c.const(np.zeros(8, np.int8), "wz"),
              c.const(np.float32(255 * 127 * k / 200), "ys"), c.const(np.uint8(0), "yz")]
    c.add_output(c.node("QLinearConv", inputs, "probe"), "y", np.uint8, [1, 8, 4, 4])
    conv = ort_session(c.model(), 1).run(None, {"x": np.full((1, k, 4, 4), 255, np.uint8)})[0]
    return not bool((conv == 200).all())
