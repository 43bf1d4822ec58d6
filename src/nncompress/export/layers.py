"""What a Linear / Conv layer exports as: its weight, bias and input quantization read from the
model's own transforms (`encode_chain`), then written as ONNX QDQ, QOperator or dynamic nodes.

Weights (lecture "Linear quantization"; ONNX QuantizeLinear / DequantizeLinear, r = S (q - Z)):
- kind "linear" per tensor / channel, symmetric, <= 8 bits: int8 codes with per-output-channel
  scales (axis 0), exactly the stored integers;
- "kmeans" (Deep Compression): int8 when every shared value is S_c q with q in [-127, 127] (checked
  exactly per output channel), else float; pruned weights ("mask") are zeros of a float weight;
- anything else (group-wise scales, float formats) goes out as the float weight the model uses.
`weight_range` says how int8 codes are written for ONNX Runtime on x86 (see `WEIGHT_RANGES`).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from ..parametrize import Encoded, encode_chain
from ..quant.activation import DynamicQuantizer, input_quantizer, on_fixed_grid
from ..validate import UserError
from .graph import Grid, Value

#: How int8 weight codes are written (ONNX Runtime's u8s8 kernels on AVX2 without VNNI add pairs of
#: uint8 x int8 products in int16 with saturation, vpmaddubsw; measured in benchmarks/results/runtime.md):
#: - "full": the stored codes in [-127, 127] (exact; fastest; can saturate on AVX2 without VNNI)
#: - "reduce": re-quantized onto [-63, 63] (7-bit, ORT's reduce_range: never saturates, not exact)
#: - "uint8": codes + 128 as uint8 with zero point 128 (exact, never saturates; u8u8 kernels, slower)
WEIGHT_RANGES = ("full", "reduce", "uint8")


@dataclass
class LayerWeight:
    """A layer's weight as exported: int codes + per-channel scale, or float `value` only."""

    value: np.ndarray                 # the float weight the model computes with
    codes: np.ndarray | None = None   # int8 codes (same shape), when integer
    scale: np.ndarray | None = None   # float32 per output channel
    how: str = "float"


def _per_channel(scale: torch.Tensor, channels: int) -> np.ndarray:
    flat = scale.detach().float().flatten()
    return (flat.expand(channels) if flat.numel() == 1 else flat).numpy().astype(np.float32).copy()


def _int8_grid(w: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(codes, per-channel scale) when every weight of each output channel is exactly S_c q with
    q in [-127, 127] (e.g. k-means centroids that sit on an int8 grid); else None."""
    rows = w.reshape(w.shape[0], -1).astype(np.float32)
    scale = np.abs(rows).max(1) / np.float32(127)
    scale = np.where(scale > 0, scale, np.float32(1)).astype(np.float32)
    codes = np.round(rows / scale[:, None])
    if not np.array_equal((codes * scale[:, None]).astype(np.float32), rows):
        return None
    return codes.astype(np.int8).reshape(w.shape), scale


def layer_weight(layer: nn.Module) -> LayerWeight:
    """The weight of `layer` as int codes where the model stores an exact int8 form, else float."""
    value = layer.weight.detach().float().numpy().copy()
    chain = encode_chain(layer, "weight") if parametrize.is_parametrized(layer, "weight") else []
    last: Encoded | None = chain[-1] if chain else None
    if last is not None and last.kind == "linear":
        granularity = last.meta.get("granularity", {})
        bits = int(last.meta.get("bits", 8))
        symmetric = not bool((last.tensors["zero_point"] != 0).any())
        if granularity.get("kind") in ("tensor", "channel") and granularity.get("axis", 0) == 0 and bits <= 8 and symmetric:
            codes = last.tensors["codes"].to(torch.int8).numpy().copy()
            return LayerWeight(value, codes, _per_channel(last.tensors["scale"], codes.shape[0]),
                               f"int{bits} per-{granularity['kind']}")
        return LayerWeight(value, how=f"float ({granularity.get('kind', '?')}-wise int{bits} has no int8 ONNX form)")
    if last is not None and last.kind == "kmeans":
        grid = _int8_grid(value)
        if grid is not None:
            return LayerWeight(value, grid[0], grid[1], "int8 (k-means codebook on an int8 grid)")
        return LayerWeight(value, how="float (k-means codebook not on an int8 grid)")
    if last is not None and last.kind == "mask":
        return LayerWeight(value, how="float (pruned zeros)")
    return LayerWeight(value, how="float" if last is None else f"float ({last.kind})")


def written_weight(weight: LayerWeight, weight_range: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(codes, per-channel scale, per-channel zero point or None) as written for `weight_range`."""
    assert weight.codes is not None and weight.scale is not None
    if weight_range == "full":
        return weight.codes, weight.scale, None
    if weight_range == "uint8":
        zero_point = np.full(weight.codes.shape[0], 128, np.uint8)
        return (weight.codes.astype(np.int16) + 128).astype(np.uint8), weight.scale, zero_point
    rows = weight.value.reshape(weight.value.shape[0], -1)
    scale = (np.abs(rows).max(1) / np.float32(63)).astype(np.float32)
    scale = np.where(scale > 0, scale, np.float32(1)).astype(np.float32)
    codes = np.clip(np.round(rows / scale[:, None]), -63, 63).astype(np.int8).reshape(weight.value.shape)
    return codes, scale, None


@dataclass
class LayerBias:
    value: np.ndarray | None          # float bias (None: the layer has none)
    int32: bool = False               # stored on the accumulator grid S_b = S_W S_X


def layer_bias(layer: nn.Module) -> LayerBias:
    bias = getattr(layer, "bias", None)
    if bias is None:
        return LayerBias(None)
    chain = encode_chain(layer, "bias") if parametrize.is_parametrized(layer, "bias") else []
    return LayerBias(bias.detach().float().numpy().copy(), bool(chain) and chain[-1].kind == "int32_bias")


@dataclass
class InputQuant:
    """How a layer's input is quantized: "static" (a Grid), "dynamic" (per tensor), "token" (per
    row, dynamic), "emulate" (other bit-widths / per-sample: float fake-quant ops) or "none"."""

    kind: str
    grid: Grid | None = None
    smooth: np.ndarray | None = None
    spec: tuple[int, int] | None = None     # (q_min, q_max) for "emulate"
    scale: float | None = None
    zero_point: float | None = None


def input_quant(layer: nn.Module, name: str) -> InputQuant:
    quantizer = input_quantizer(layer)
    if quantizer is None:
        return InputQuant("none")
    smooth = None if quantizer.smooth is None else quantizer.smooth.detach().float().numpy().copy()
    q_min, q_max = quantizer.spec.q_range
    if on_fixed_grid(quantizer):  # learned integer grids too (PACT, LSQ)
        scale, zero_point = float(quantizer.scale.flatten()[0]), int(quantizer.zero_point.flatten()[0])
        if quantizer.scale.numel() != 1:
            raise UserError(f"layer {name!r}: per-channel activation scales have no ONNX QuantizeLinear form on an input")
        if (q_min, q_max) == (0, 255):
            return InputQuant("static", Grid(scale, zero_point, "uint8"), smooth)
        if (q_min, q_max) == (-128, 127):
            return InputQuant("static", Grid(scale, zero_point, "int8"), smooth)
        return InputQuant("emulate", None, smooth, (q_min, q_max), scale, zero_point)
    if isinstance(quantizer, DynamicQuantizer):
        if quantizer.spec.bits == 8 and not quantizer.spec.symmetric and quantizer.per in ("tensor", "token"):
            if quantizer.per == "token" and not isinstance(layer, nn.Linear):
                raise UserError(f"layer {name!r}: per-token activation quantization is for Linear layers")
            return InputQuant("dynamic" if quantizer.per == "tensor" else "token", None, smooth, (q_min, q_max))
        return InputQuant("emulate-dynamic", None, smooth, (q_min, q_max))
    raise UserError(f"layer {name!r}: activation quantizer {type(quantizer).__name__} has no ONNX export "
                    "(supported: StaticQuantizer, DynamicQuantizer)")


# -- emission -------------------------------------------------------------------------------------
CONV_TYPES = (nn.Conv1d, nn.Conv2d)


def conv_attrs(layer: nn.Module, name: str) -> dict:
    if layer.padding_mode != "zeros" or isinstance(layer.padding, str) and layer.padding != "valid":
        raise UserError(f"layer {name!r}: Conv padding={layer.padding!r} / padding_mode={layer.padding_mode!r} has "
                        "no ONNX export here (numeric zero padding only)")
    pads = [0] * len(layer.kernel_size) if isinstance(layer.padding, str) else list(layer.padding)
    return {"kernel_shape": list(layer.kernel_size), "strides": list(layer.stride), "dilations": list(layer.dilation),
            "pads": pads + pads, "group": int(layer.groups)}


def _channel_shape(layer: nn.Module, rank: int) -> list[int]:
    """Shape that broadcasts a per-output-channel vector against the layer's output."""
    return [-1] + [1] * (rank - 2) if isinstance(layer, CONV_TYPES) else [-1]


def emit_layer(ex, layer: nn.Module, name: str, x, out_grid: Grid | None, rank: int, out_shape: list[int] | None = None):
    """Lower one Linear / Conv layer; `x` is its input Value, `rank` the input's rank, `out_shape` its
    output shape (-1 for the batch) when known. Returns a Value."""
    weight, bias, iq = layer_weight(layer), layer_bias(layer), input_quant(layer, name)
    conv = isinstance(layer, CONV_TYPES)
    if iq.smooth is not None:
        x = Value(float=ex.g.node("Div", [ex.as_float(x, name), ex.g.const(iq.smooth, f"{name}.smooth")], name))
    integer = weight.codes is not None
    ex.layers[name] = {"weight": weight.how + (f", written {ex.weight_range}" if integer else ""), "input": iq.kind}
    if integer and iq.kind == "static":
        xq, weight = _align_input_channels(ex, layer, name, ex.to_grid(x, iq.grid, name), weight)
        if ex.fmt == "qoperator":
            return _qoperator_layer(ex, layer, name, xq, iq.grid, weight, bias, out_grid, rank)
        return _qdq_layer(ex, layer, name, ex.as_float(xq, name), iq.grid, weight, bias, rank)
    if integer and iq.kind in ("dynamic", "token"):
        return _dynamic_layer(ex, layer, name, ex.as_float(x, name), iq, weight, bias, rank, out_shape)
    if iq.kind == "emulate-dynamic":
        raise UserError(f"layer {name!r}: dynamic {iq.spec} activation quantization (per sample or not 8-bit) "
                        "has no ONNX export; use per-token (Linear) or static activations")
    xf = ex.as_float(ex.to_grid(x, iq.grid, name) if iq.kind == "static" else x, name)
    if iq.kind == "emulate":
        xf = _fake_quant(ex, name, xf, iq)
    elif iq.kind == "dynamic":
        q, s, z = ex.g.node("DynamicQuantizeLinear", [xf], name, outputs=3)
        xf = ex.g.node("DequantizeLinear", [q, s, z], name)
    elif iq.kind == "token":
        q, s, _, zq = _per_token_codes(ex, name, xf, layer.in_features)
        xf = ex.g.node("Reshape", [ex.g.node("DequantizeLinear", [q, s, zq], name, axis=0),
                                   ex.g.node("Shape", [xf], name)], name)
    w = weight.value
    if integer:  # weight-only int codes: DequantizeLinear on the weight
        codes, scale, zp = written_weight(weight, ex.weight_range)
        w_name = _dq_weight(ex, name, codes, scale, zp, conv or rank == 2)
    else:
        w_name = ex.g.const(w if conv or rank == 2 else w.T, f"{name}.weight")
    b_name = None if bias.value is None else ex.g.const(bias.value, f"{name}.bias")
    return Value(float=_float_layer(ex, layer, name, xf, w_name, b_name, rank))


#: ONNX Runtime's fast int8 convolution on x86 (MLAS's symmetric "ConvSym" kernels: int8 weights with
#: zero point 0, no im2col) takes input channels in multiples of this and at least 16 output channels;
#: other convolutions fall back to an im2col GEMM.
ORT_CONV_INPUT_ALIGN, ORT_CONV_MIN_OUTPUTS = 4, 16


def _align_input_channels(ex, layer: nn.Module, name: str, xq: Value, weight: LayerWeight):
    """A Conv2d on uint8 input codes whose input channels are not a multiple of ORT_CONV_INPUT_ALIGN (an
    image stem: 1 or 3 channels) gets its input codes padded with the zero point (Pad) and its weight with zero
    columns, so ONNX Runtime runs it on the fast kernel. Exact: each added term is (Z - Z) * 0 = 0.
    Measured on ResNet-20's 1-channel stem at batch 64, one thread: 1.38 -> 0.94 ms, the whole
    network 3% faster. Returns the (input, weight) to emit."""
    c_in = weight.value.shape[1] if weight.value.ndim == 4 else 0
    if not (isinstance(layer, nn.Conv2d) and layer.groups == 1 and c_in % ORT_CONV_INPUT_ALIGN
            and weight.value.shape[0] >= ORT_CONV_MIN_OUTPUTS and weight.codes is not None
            and ex.weight_range != "uint8" and xq.codes is not None):
        return xq, weight
    if xq.grid.dtype != "uint8":  # int8 codes (LSQ's signed grids): ORT makes an int8 Q -> DQ pair uint8 only
        return xq, weight         # when adjacent, and a padded int8 stem ran as a float Conv in both formats
    extra = -c_in % ORT_CONV_INPUT_ALIGN
    pads = np.zeros(8, np.int64)
    pads[4 + 1] = extra  # [begin of N, C, H, W, end of N, C, H, W]: the end of the channel axis
    g = ex.g
    padded = g.node("Pad", [xq.codes, g.const(pads, f"{name}.channel_pads"),
                            g.const(np.array(xq.grid.zero_point, xq.grid.np_dtype), f"{name}.pad_value")], name)
    ex.layers[name]["input"] += f" (channels padded {c_in} -> {c_in + extra} for ONNX Runtime's int8 conv kernel)"
    return Value(codes=padded, grid=xq.grid), replace(weight, value=_zero_inputs(weight.value, extra),
                                                           codes=_zero_inputs(weight.codes, extra))


def _zero_inputs(w: np.ndarray, extra: int) -> np.ndarray:
    """`w` (out, in, ...) with `extra` zero input channels appended."""
    return np.concatenate([w, np.zeros((w.shape[0], extra) + w.shape[2:], w.dtype)], axis=1)


def _dq_weight(ex, name: str, codes: np.ndarray, scale: np.ndarray, zp: np.ndarray | None, keep_layout: bool) -> str:
    """DequantizeLinear of the weight codes, per output channel: axis 0 in torch's layout (Conv,
    Gemm with transB), axis 1 for a MatMul's (in, out) layout."""
    g = ex.g
    codes = codes if keep_layout else np.ascontiguousarray(codes.T)
    zp = zp if zp is not None else np.zeros(scale.shape, np.int8)
    return g.node("DequantizeLinear", [g.const(codes, f"{name}.weight_q"), g.const(scale, f"{name}.weight_scale"),
                                       g.const(zp, f"{name}.weight_zero_point")], name, axis=0 if keep_layout else 1)


def _float_layer(ex, layer: nn.Module, name: str, xf: str, w: str, b: str | None, rank: int) -> str:
    g = ex.g
    if isinstance(layer, CONV_TYPES):
        return g.node("Conv", [xf, w] + ([b] if b else []), name, **conv_attrs(layer, name))
    if rank == 2:
        return g.node("Gemm", [xf, w] + ([b] if b else []), name, transB=1)
    y = g.node("MatMul", [xf, w], name)
    return g.node("Add", [y, b], name) if b else y


def _bias_codes(bias: LayerBias, acc_scale: np.ndarray) -> np.ndarray:
    """The bias on the accumulator grid S_x S_w as int32 (exactly the stored codes for an int32 bias)."""
    return np.clip(np.round(bias.value / acc_scale), -(2**31), 2**31 - 1).astype(np.int32)


def _qdq_layer(ex, layer, name, xf: str, grid: Grid, weight: LayerWeight, bias: LayerBias, rank: int):
    g = ex.g
    conv = isinstance(layer, CONV_TYPES)
    codes, scale, zp = written_weight(weight, ex.weight_range)
    w = _dq_weight(ex, name, codes, scale, zp, conv or rank == 2)
    b = None
    if bias.value is not None:
        acc_scale = (np.float32(grid.scale) * scale).astype(np.float32)
        b = g.node("DequantizeLinear", [g.const(_bias_codes(bias, acc_scale), f"{name}.bias_q"),
                                        g.const(acc_scale, f"{name}.bias_scale"),
                                        g.const(np.zeros(acc_scale.shape, np.int32), f"{name}.bias_zero_point")],
                   name, axis=0)
    return Value(float=_float_layer(ex, layer, name, xf, w, b, rank))


def _qoperator_layer(ex, layer, name, xq, grid: Grid, weight: LayerWeight, bias: LayerBias, out_grid, rank: int):
    """QLinearConv when the output has a grid; Linear: MatMulInteger + int32 bias, then the float
    rescale S_x S_w (the requantization onto the next grid is the next QuantizeLinear); a Conv whose
    output has no grid runs as DequantizeLinear + float Conv."""
    g = ex.g
    conv = isinstance(layer, CONV_TYPES)
    codes, scale, zp = written_weight(weight, ex.weight_range)
    acc_scale = (np.float32(grid.scale) * scale).astype(np.float32)
    x_scale = g.const(np.float32(grid.scale), f"{name}.x_scale")
    x_zp = g.const(np.array(grid.zero_point, grid.np_dtype), f"{name}.x_zero_point")
    w_zp = zp if zp is not None else np.zeros(scale.shape, np.int8)
    b_codes = None if bias.value is None else g.const(_bias_codes(bias, acc_scale), f"{name}.bias_q")
    if conv and out_grid is not None and out_grid.dtype == grid.dtype:  # ORT's QLinearConv: x and y of one type
        inputs = [xq.codes, x_scale, x_zp, g.const(codes, f"{name}.weight_q"), g.const(scale, f"{name}.weight_scale"),
                  g.const(w_zp, f"{name}.weight_zero_point"), g.const(np.float32(out_grid.scale), f"{name}.y_scale"),
                  g.const(np.array(out_grid.zero_point, out_grid.np_dtype), f"{name}.y_zero_point")]
        y = g.node("QLinearConv", inputs + ([b_codes] if b_codes else []), name, **conv_attrs(layer, name))
        return Value(codes=y, grid=out_grid)
    if conv:  # ConvInteger is a slow reference kernel in ONNX Runtime: dequantize and run a float Conv
        b = None if bias.value is None else g.node(
            "DequantizeLinear", [b_codes, g.const(acc_scale, f"{name}.bias_scale")], name, axis=0)
        w = _dq_weight(ex, name, codes, scale, zp, True)
        return Value(float=_float_layer(ex, layer, name, ex.as_float(xq, name), w, b, rank))
    w_codes = g.const(np.ascontiguousarray(codes.T), f"{name}.weight_q")
    w_zp_name = g.const(w_zp[:1].reshape(()), f"{name}.weight_zero_point")  # uniform: a scalar
    acc = g.node("MatMulInteger", [xq.codes, w_codes, x_zp, w_zp_name], name)
    if b_codes:
        b_shape = np.array(_channel_shape(layer, rank), np.int64)
        acc = g.node("Add", [acc, g.node("Reshape", [b_codes, g.const(b_shape, "shape")], name)], name)
    acc_f = g.node("Cast", [acc], name, to=1)
    s = g.const(acc_scale.reshape([len(acc_scale)] + [1] * (len(_channel_shape(layer, rank)) - 1)), f"{name}.acc_scale")
    return Value(float=g.node("Mul", [acc_f, s], name))


def _per_token_codes(ex, name: str, xf: str, k: int):
    """Per-row affine int8 codes of x (as uint8 = code + 128): ranges include 0, S = (max - min) / 255,
    Z = clamp(round(-128 - min / S)), exactly DynamicQuantizer(per="token"). Returns (uint8 codes
    (rows, k), row scale (rows,), zero point + 128 as float (rows, 1) and as uint8 (rows,))."""
    g = ex.g
    shape2 = g.const(np.array([-1, k], np.int64), "shape")
    x2 = g.node("Reshape", [xf, shape2], name)
    zero = g.const(np.float32(0), "zero")
    lo = g.node("Min", [g.node("ReduceMin", [x2], name, axes=[1], keepdims=1), zero], name)
    hi = g.node("Max", [g.node("ReduceMax", [x2], name, axes=[1], keepdims=1), zero], name)
    scale = g.node("Div", [g.node("Sub", [hi, lo], name), g.const(np.float32(255), "c255")], name)
    # an all-zero row: any scale gives codes Z and the value 0 (the model uses S = 1, this S = tiny)
    scale = g.node("Max", [scale, g.const(np.float32(np.finfo(np.float32).tiny), "tiny")], name)
    # Z + 128 = clamp(round(-128 - min / S), -128, 127) + 128 = clamp(round(-min / S), 0, 255) (-128 is even)
    zp = g.node("Round", [g.node("Div", [g.node("Neg", [lo], name), scale], name)], name)
    zp_u8f = g.node("Clip", [zp, g.const(np.float32(0), "zero"), g.const(np.float32(255), "c255")], name)
    flat = g.const(np.array([-1], np.int64), "shape")
    scale1, zp_u8 = g.node("Reshape", [scale, flat], name), g.node("Cast", [g.node("Reshape", [zp_u8f, flat], name)], name, to=2)
    q = g.node("QuantizeLinear", [x2, scale1, zp_u8], name, axis=0)
    return q, scale1, zp_u8f, zp_u8


def _dynamic_layer(ex, layer, name, xf: str, iq: InputQuant, weight: LayerWeight, bias: LayerBias, rank: int,
                   out_shape: list[int] | None = None):
    """Dynamic activations in integer kernels: DynamicQuantizeLinear (per tensor) or per-row codes
    (per token), MatMulInteger / ConvInteger, then y = S_x S_w (acc - Z_x sum_k q_w) + b in float."""
    g = ex.g
    codes, scale, zp = written_weight(weight, ex.weight_range)
    conv = isinstance(layer, CONV_TYPES)
    w_zp = [] if zp is None else [g.const(zp[:1].reshape(()), f"{name}.weight_zero_point")]
    b = None if bias.value is None else g.const(bias.value.reshape(_channel_shape(layer, rank)), f"{name}.bias")
    if iq.kind == "dynamic":
        q, s, z = g.node("DynamicQuantizeLinear", [xf], name, outputs=3)
        w_codes = g.const(codes if conv else np.ascontiguousarray(codes.T), f"{name}.weight_q")
        op = "ConvInteger" if conv else "MatMulInteger"
        attrs = conv_attrs(layer, name) if conv else {}
        acc = g.node(op, [q, w_codes, z] + w_zp, name, **attrs)
        s_all = g.node("Mul", [s, g.const(scale.reshape(_channel_shape(layer, rank)), f"{name}.weight_scale")], name)
        y = g.node("Mul", [g.node("Cast", [acc], name, to=1), s_all], name)
        return Value(float=g.node("Add", [y, b], name) if b else y)
    q, s, zp_f, _ = _per_token_codes(ex, name, xf, layer.in_features)
    w_codes = g.const(np.ascontiguousarray(codes.T), f"{name}.weight_q")
    acc = g.node("Cast", [g.node("MatMulInteger", [q, w_codes, g.const(np.uint8(0), "u8_zero")] + w_zp, name)], name, to=1)
    signed = codes.reshape(codes.shape[0], -1).astype(np.int64) - (0 if zp is None else zp.astype(np.int64)[:, None])
    colsum = signed.sum(1)
    colsum = (colsum.astype(np.float32) * scale).astype(np.float32)   # S_w sum_k q_w per output
    row_scale = g.node("Unsqueeze", [s, g.const(np.array([1], np.int64), "axes1")], name)
    y = g.node("Mul", [acc, g.node("Mul", [row_scale, g.const(scale, f"{name}.weight_scale")], name)], name)
    correction = g.node("Mul", [g.node("Mul", [zp_f, row_scale], name), g.const(colsum, f"{name}.weight_colsum")], name)
    y = g.node("Sub", [y, correction], name)
    if b:
        y = g.node("Add", [y, b], name)
    if rank == 2:
        return Value(float=y)
    if out_shape is not None:
        shape = g.const(np.array(out_shape, np.int64), "shape")
    else:
        lead = g.node("Slice", [g.node("Shape", [xf], name), g.const(np.array([0], np.int64), "start"),
                                g.const(np.array([-1], np.int64), "end")], name)
        shape = g.node("Concat", [lead, g.const(np.array([codes.shape[0]], np.int64), f"{name}.out_features")], name, axis=0)
    return Value(float=g.node("Reshape", [y, shape], name))


def _fake_quant(ex, name: str, xf: str, iq: InputQuant) -> str:
    """r -> S (clamp(round(r / S) + Z, q_min, q_max) - Z) in float ops (activation bit-widths other than 8)."""
    g = ex.g
    s, z = g.const(np.float32(iq.scale), f"{name}.x_scale"), g.const(np.float32(iq.zero_point), f"{name}.x_zero_point")
    q = g.node("Add", [g.node("Round", [g.node("Div", [xf, s], name)], name), z], name)
    q = g.node("Clip", [q, g.const(np.float32(iq.spec[0]), "q_min"), g.const(np.float32(iq.spec[1]), "q_max")], name)
    return g.node("Mul", [g.node("Sub", [q, z], name), s], name)
