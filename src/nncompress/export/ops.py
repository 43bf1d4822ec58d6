"""ONNX lowering of the float operations between quantized layers (one small function per op).

Each handler takes the exporter and the fx node and returns a `Value`. Ops of kind "preserve"
(ReLU, max pooling, reshapes, transposes, identity / dropout) commute with a monotone code map, so
in QOperator form they run on the 8-bit codes and in QDQ form the exporter re-quantizes their
output onto the same grid (exact), which lets ONNX Runtime keep them in int8. Shapes come from
the traced run, with the batch-dependent dimension written as -1, so the exported model takes any
batch size.
"""
from __future__ import annotations

import math
import operator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..quant.attention import SplitAttention
from ..validate import UserError
from .graph import Value
from .layers import CONV_TYPES, emit_layer

LAYER_TYPES = (nn.Linear, *CONV_TYPES)


# -- helpers ----------------------------------------------------------------------------------------
def _pool_attrs(kernel, stride, padding, dilation=1, ceil_mode=False) -> dict:
    pair = lambda v: [v, v] if isinstance(v, int) else list(v)  # noqa: E731
    stride = kernel if stride is None or stride == [] else stride
    attrs = {"kernel_shape": pair(kernel), "strides": pair(stride), "pads": pair(padding) * 2, "ceil_mode": int(ceil_mode)}
    if pair(dilation) != [1, 1]:
        attrs["dilations"] = pair(dilation)
    return attrs


def _on_codes_or_float(ex, node, op) -> Value:
    """Apply a layout / order op (`op(tensor_name) -> name`) on the codes when the input is held as
    codes (QOperator), else on the float tensor."""
    v = ex.tensor_arg(node, 0)
    if ex.fmt == "qoperator" and v.codes is not None and v.float is None:
        return Value(codes=op(v.codes), grid=v.grid)
    return Value(float=op(ex.as_float(v, ex.where(node))))


def _axis(dim: int, rank: int) -> int:
    return dim % rank


# -- "preserve" ops -----------------------------------------------------------------------------
def relu(ex, node) -> Value:
    v = ex.tensor_arg(node, 0)
    where = ex.where(node)
    if ex.fmt == "qoperator" and v.codes is not None and v.float is None:
        q_min = 0 if v.grid.dtype == "uint8" else -128
        if v.grid.zero_point <= q_min:
            return v
        return Value(codes=ex.g.node("Max", [v.codes, ex.g.const(np.array(v.grid.zero_point, v.grid.np_dtype), "zp")], where),
                     grid=v.grid)
    grid = ex.grids.get(node.name)
    if grid is not None and grid.zero_point == (0 if grid.dtype == "uint8" else -128):
        # codes with Z = q_min are >= 0 in real terms: the QuantizeLinear onto this grid is the ReLU
        return v if v.grid == grid else Value(float=ex.as_float(v, where))
    return Value(float=ex.g.node("Relu", [ex.as_float(v, where)], where))


def passthrough(ex, node) -> Value:
    return ex.tensor_arg(node, 0)


def reshape(ex, node) -> Value:
    shape = ex.shape_const(node)
    return _on_codes_or_float(ex, node, lambda t: ex.g.node("Reshape", [t, shape], ex.where(node)))


def transpose(ex, node) -> Value:
    rank = len(ex.shape(node.args[0]))
    if node.target == "permute" or getattr(node.target, "__name__", "") == "permute":
        dims = node.args[1:] if len(node.args) > 2 or isinstance(node.args[1], int) else node.args[1]
        perm = [_axis(d, rank) for d in dims]
    else:
        a, b = _axis(node.args[1], rank), _axis(node.args[2], rank)
        perm = list(range(rank))
        perm[a], perm[b] = perm[b], perm[a]
    return _on_codes_or_float(ex, node, lambda t: ex.g.node("Transpose", [t], ex.where(node), perm=perm))


def unfold(ex, node) -> Value:
    """Tensor.unfold(dim, size, step) with step == size (non-overlapping patches): a reshape that
    splits `dim` into (n, size) and a transpose moving `size` last."""
    _, dim, size, step = node.args
    in_shape = ex.shape(node.args[0])
    rank = len(in_shape)
    dim = _axis(dim, rank)
    if step != size or in_shape[dim] % size:
        raise UserError(f"{ex.describe(node)}: only non-overlapping unfold (step == size dividing the dimension) exports")
    split = list(in_shape[:dim]) + [in_shape[dim] // size, size] + list(in_shape[dim + 1:])
    perm = [i for i in range(rank + 1) if i != dim + 1] + [dim + 1]
    shape = ex.g.const(np.array(split, np.int64), "shape")
    where = ex.where(node)
    return _on_codes_or_float(ex, node, lambda t: ex.g.node(
        "Transpose", [ex.g.node("Reshape", [t, shape], where)], where, perm=perm))


def maxpool(ex, node) -> Value:
    if node.op == "call_module":
        m = ex.modules[node.target]
        attrs = _pool_attrs(m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode)
        if m.return_indices:
            raise UserError(f"{ex.describe(node)}: return_indices has no ONNX export")
    else:
        args = ex.const_args(node)[1:]
        kw = {**dict(zip(("kernel_size", "stride", "padding", "dilation", "ceil_mode"), args)), **node.kwargs}
        attrs = _pool_attrs(kw["kernel_size"], kw.get("stride"), kw.get("padding", 0), kw.get("dilation", 1),
                            kw.get("ceil_mode", False))
    return _on_codes_or_float(ex, node, lambda t: ex.g.node("MaxPool", [t], ex.where(node), **attrs))


# -- float ops ----------------------------------------------------------------------------------
def layer(ex, node) -> Value:
    module = ex.modules[node.target]
    if len(node.args) != 1 or node.kwargs:
        raise UserError(f"{ex.describe(node)}: called with extra arguments")
    rank = len(ex.shape(node.args[0]))
    return emit_layer(ex, module, str(node.target), ex.tensor_arg(node, 0), ex.grids.get(node.name), rank, ex.shape(node))


def binary(op_type: str):
    def handler(ex, node) -> Value:
        args = ex.args(node)
        if len(args) != 2 or (node.kwargs and set(node.kwargs) - {"alpha"}):
            raise UserError(f"{ex.describe(node)}: only two operands are supported")
        where = ex.where(node)
        names = [ex.as_float(a, where) if isinstance(a, Value) else ex.g.const(np.float32(a), "scalar") for a in args]
        return Value(float=ex.g.node(op_type, names, where))
    return handler


def matmul(ex, node) -> Value:
    a, b = ex.args(node)[:2]
    where = ex.where(node)
    return Value(float=ex.g.node("MatMul", [ex.as_float(a, where), ex.as_float(b, where)], where))


def softmax(ex, node) -> Value:
    if node.op == "call_module":
        dim = ex.modules[node.target].dim
    else:
        dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
    if dim is None:
        raise UserError(f"{ex.describe(node)}: softmax needs an explicit dim")
    return Value(float=ex.g.node("Softmax", [ex.as_float(ex.tensor_arg(node, 0), ex.where(node))], ex.where(node),
                                 axis=int(dim)))


def unary(op_type: str):
    def handler(ex, node) -> Value:
        return Value(float=ex.g.node(op_type, [ex.as_float(ex.tensor_arg(node, 0), ex.where(node))], ex.where(node)))
    return handler


def gelu(ex, node) -> Value:
    """0.5 x (1 + erf(x / sqrt 2)) (ONNX Runtime fuses it into one Gelu), or the tanh approximation."""
    approximate = ex.modules[node.target].approximate if node.op == "call_module" else node.kwargs.get("approximate", "none")
    g, where = ex.g, ex.where(node)
    x = ex.as_float(ex.tensor_arg(node, 0), where)
    if approximate == "tanh":
        cube = g.node("Mul", [g.node("Mul", [x, x], where), x], where)
        inner = g.node("Add", [x, g.node("Mul", [cube, g.const(np.float32(0.044715), "c")], where)], where)
        t = g.node("Tanh", [g.node("Mul", [inner, g.const(np.float32(math.sqrt(2 / math.pi)), "c")], where)], where)
    else:
        t = g.node("Erf", [g.node("Div", [x, g.const(np.float32(math.sqrt(2)), "sqrt2")], where)], where)
    one_plus = g.node("Add", [t, g.const(np.float32(1), "one")], where)
    return Value(float=g.node("Mul", [g.node("Mul", [x, one_plus], where), g.const(np.float32(0.5), "half")], where))


def silu(ex, node) -> Value:
    where = ex.where(node)
    x = ex.as_float(ex.tensor_arg(node, 0), where)
    return Value(float=ex.g.node("Mul", [x, ex.g.node("Sigmoid", [x], where)], where))


def layer_norm(ex, node) -> Value:
    g, where = ex.g, ex.where(node)
    if node.op == "call_module":
        m = ex.modules[node.target]
        shape, eps = tuple(m.normalized_shape), m.eps
        weight = m.weight.detach().numpy() if m.weight is not None else np.ones(shape, np.float32)
        bias = m.bias.detach().numpy() if m.bias is not None else np.zeros(shape, np.float32)
    else:
        raise UserError(f"{ex.describe(node)}: use nn.LayerNorm modules for ONNX export")
    rank = len(ex.shape(node.args[0]))
    x = ex.as_float(ex.tensor_arg(node, 0), where)
    return Value(float=g.node("LayerNormalization", [x, g.const(weight, f"{where}.weight"), g.const(bias, f"{where}.bias")],
                              where, axis=rank - len(shape), epsilon=float(eps)))


def batch_norm(ex, node) -> Value:
    m, g, where = ex.modules[node.target], ex.g, ex.where(node)
    if not m.track_running_stats or m.running_mean is None:
        raise UserError(f"{ex.describe(node)}: BatchNorm without running statistics has no inference form")
    c = m.num_features
    weight = m.weight.detach().numpy() if m.affine else np.ones(c, np.float32)
    bias = m.bias.detach().numpy() if m.affine else np.zeros(c, np.float32)
    inputs = [ex.as_float(ex.tensor_arg(node, 0), where), g.const(weight, f"{where}.weight"), g.const(bias, f"{where}.bias"),
              g.const(m.running_mean.numpy(), f"{where}.mean"), g.const(m.running_var.numpy(), f"{where}.var")]
    return Value(float=g.node("BatchNormalization", inputs, where, epsilon=float(m.eps)))


def avgpool(ex, node) -> Value:
    g, where = ex.g, ex.where(node)
    x = ex.as_float(ex.tensor_arg(node, 0), where)
    in_shape, out_shape = ex.shape(node.args[0]), ex.shape(node)
    m = ex.modules.get(node.target) if node.op == "call_module" else None
    if isinstance(m, nn.AvgPool2d):
        if not m.count_include_pad and m.padding or m.divisor_override:
            raise UserError(f"{ex.describe(node)}: count_include_pad=False / divisor_override have no ONNX export")
        attrs = _pool_attrs(m.kernel_size, m.stride, m.padding, 1, m.ceil_mode)
        return Value(float=g.node("AveragePool", [x], where, count_include_pad=1, **attrs))
    if list(out_shape[-2:]) == [1, 1]:
        return Value(float=g.node("GlobalAveragePool", [x], where))
    h, w = in_shape[-2:]
    oh, ow = out_shape[-2:]
    if h % oh or w % ow:
        raise UserError(f"{ex.describe(node)}: adaptive pooling {h}x{w} -> {oh}x{ow} has uneven windows")
    return Value(float=g.node("AveragePool", [x], where, kernel_shape=[h // oh, w // ow], strides=[h // oh, w // ow]))


def reduce_mean(ex, node) -> Value:
    args = ex.const_args(node)
    dims = node.kwargs.get("dim", args[1] if len(args) > 1 else None)
    keepdim = node.kwargs.get("keepdim", args[2] if len(args) > 2 else False)
    rank = len(ex.shape(node.args[0]))
    attrs = {"keepdims": int(bool(keepdim))}
    if dims is not None:
        attrs["axes"] = [_axis(d, rank) for d in ([dims] if isinstance(dims, int) else dims)]
    where = ex.where(node)
    return Value(float=ex.g.node("ReduceMean", [ex.as_float(ex.tensor_arg(node, 0), where)], where, **attrs))


def getitem(ex, node):
    base = ex.env[node.args[0].name]
    index = node.args[1]
    if not isinstance(base, Value):
        return base[index] if not isinstance(index, torch.fx.Node) else base[ex.env[index.name]]
    return _slice(ex, node, base, index if isinstance(index, tuple) else (index,))


def _slice(ex, node, value: Value, index: tuple) -> Value:
    """x[...] with ints and slices (static bounds): Slice, then Squeeze of the integer-indexed axes."""
    g, where = ex.g, ex.where(node)
    x = ex.as_float(value, where)
    starts, ends, axes, steps, squeeze = [], [], [], [], []
    for axis, item in enumerate(index):
        if isinstance(item, int):
            starts.append(item)
            ends.append(item + 1 if item != -1 else np.iinfo(np.int64).max)
            axes.append(axis), steps.append(1), squeeze.append(axis)
        elif isinstance(item, slice):
            if item == slice(None):
                continue
            starts.append(item.start or 0)
            ends.append(item.stop if item.stop is not None else np.iinfo(np.int64).max)
            axes.append(axis), steps.append(item.step or 1)
        else:
            raise UserError(f"{ex.describe(node)}: indexing with {item!r} has no ONNX export (ints and slices only)")
    if axes:
        arrays = [g.const(np.array(v, np.int64), "slice") for v in (starts, ends, axes, steps)]
        x = g.node("Slice", [x, *arrays], where)
    if squeeze:
        x = g.node("Squeeze", [x, g.const(np.array(squeeze, np.int64), "axes")], where)
    return Value(float=x)


def concat(ex, node) -> Value:
    tensors = ex.args(node)[0]
    dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else 0)
    where = ex.where(node)
    return Value(float=ex.g.node("Concat", [ex.as_float(t, where) for t in tensors], where,
                                 axis=_axis(dim, len(ex.shape(node)))))


def attention(ex, node):
    """SplitAttention (nn.MultiheadAttention unfused by nc.unfuse_attention_) without masks."""
    m: SplitAttention = ex.modules[node.target]
    args = list(node.args) + [None] * (3 - len(node.args))
    kwargs = {**dict(zip(("key_padding_mask", "need_weights", "attn_mask"), node.args[3:])), **node.kwargs}
    if kwargs.get("key_padding_mask") is not None or kwargs.get("attn_mask") is not None or kwargs.get("is_causal"):
        raise UserError(f"{ex.describe(node)}: attention masks have no ONNX export yet")
    shape = ex.shape(args[0])
    if len(shape) != 3:
        raise UserError(f"{ex.describe(node)}: only batched (3-D) attention inputs export")
    g, where = ex.g, ex.where(node)
    seq_axis = 1 if m.batch_first else 0
    length, heads, e = shape[seq_axis], m.num_heads, m.embed_dim
    d = e // heads

    def project(proj: nn.Linear, arg, suffix: str) -> str:
        v = emit_layer(ex, proj, f"{node.target}.{suffix}", ex.env[arg.name], None, 3)
        x = ex.as_float(v, where)
        to_heads = [-1, length, heads, d] if m.batch_first else [length, -1, heads, d]
        x = g.node("Reshape", [x, g.const(np.array(to_heads, np.int64), "shape")], where)
        return g.node("Transpose", [x], where, perm=[0, 2, 1, 3] if m.batch_first else [1, 2, 0, 3])

    q, k, v = (project(p, a, s) for p, a, s in ((m.q_proj, args[0], "q_proj"), (m.k_proj, args[1], "k_proj"),
                                                 (m.v_proj, args[2], "v_proj")))
    scores = g.node("Div", [g.node("MatMul", [q, g.node("Transpose", [k], where, perm=[0, 1, 3, 2])], where),
                            g.const(np.float32(math.sqrt(d)), "sqrt_d")], where)
    out = g.node("MatMul", [g.node("Softmax", [scores], where, axis=-1), v], where)          # (N, H, L, D)
    out = g.node("Transpose", [out], where, perm=[0, 2, 1, 3] if m.batch_first else [2, 0, 1, 3])
    merged = [-1, length, e] if m.batch_first else [length, -1, e]
    out = g.node("Reshape", [out, g.const(np.array(merged, np.int64), "shape")], where)
    y = emit_layer(ex, m.out_proj, f"{node.target}.out_proj", Value(float=out), None, 3)
    return (y, None)


#: (module types, handler, kind); kind "layer" / "preserve" / "add" / "float" drives the Q/DQ plan.
MODULE_OPS = [
    (LAYER_TYPES, layer, "layer"), (SplitAttention, attention, "float"),
    ((nn.ReLU,), relu, "preserve"), ((nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d), passthrough, "preserve"),
    ((nn.MaxPool1d, nn.MaxPool2d), maxpool, "preserve"), ((nn.Flatten, nn.Unflatten), reshape, "preserve"),
    ((nn.AvgPool2d, nn.AdaptiveAvgPool2d), avgpool, "float"), ((nn.GELU,), gelu, "float"),
    ((nn.SiLU,), silu, "float"), ((nn.Sigmoid,), unary("Sigmoid"), "float"), ((nn.Tanh,), unary("Tanh"), "float"),
    ((nn.Softmax,), softmax, "float"), ((nn.LayerNorm,), layer_norm, "float"),
    ((nn.BatchNorm1d, nn.BatchNorm2d), batch_norm, "float"),
]
FUNCTION_OPS = {
    operator.add: (binary("Add"), "add"), torch.add: (binary("Add"), "add"), operator.sub: (binary("Sub"), "float"),
    torch.sub: (binary("Sub"), "float"), operator.mul: (binary("Mul"), "float"), torch.mul: (binary("Mul"), "float"),
    operator.truediv: (binary("Div"), "float"), torch.div: (binary("Div"), "float"),
    operator.matmul: (matmul, "float"), torch.matmul: (matmul, "float"), torch.bmm: (matmul, "float"),
    F.relu: (relu, "preserve"), torch.relu: (relu, "preserve"), torch.flatten: (reshape, "preserve"),
    torch.reshape: (reshape, "preserve"), torch.transpose: (transpose, "preserve"), torch.permute: (transpose, "preserve"),
    F.max_pool2d: (maxpool, "preserve"), F.adaptive_avg_pool2d: (avgpool, "float"), F.gelu: (gelu, "float"),
    F.silu: (silu, "float"), torch.sigmoid: (unary("Sigmoid"), "float"), torch.tanh: (unary("Tanh"), "float"),
    torch.softmax: (softmax, "float"), F.softmax: (softmax, "float"), torch.mean: (reduce_mean, "float"),
    torch.cat: (concat, "float"), operator.getitem: (getitem, "float"), F.dropout: (passthrough, "preserve"),
}
METHOD_OPS = {
    "relu": (relu, "preserve"), "view": (reshape, "preserve"), "reshape": (reshape, "preserve"),
    "flatten": (reshape, "preserve"), "transpose": (transpose, "preserve"), "permute": (transpose, "preserve"),
    "contiguous": (passthrough, "preserve"), "unfold": (unfold, "preserve"), "softmax": (softmax, "float"),
    "mean": (reduce_mean, "float"), "add": (binary("Add"), "add"), "mul": (binary("Mul"), "float"),
    "sigmoid": (unary("Sigmoid"), "float"), "tanh": (unary("Tanh"), "float"), "matmul": (matmul, "float"),
}
