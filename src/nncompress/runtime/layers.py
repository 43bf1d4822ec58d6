"""Integer Linear / Conv layers (Jacob et al., CVPR 2018, sec. 2.3-2.4; lecture "Linear quantization:
fully-connected layer" and "convolution layer").

With symmetric weights (Z_W = 0) and the bias on the accumulator grid (S_b = S_W S_X, Z_b = 0):
    S_Y (q_Y - Z_Y) = S_W S_X (q_W q_X - Z_X q_W + q_b)
so the layer accumulates acc = q_W q_X + q_bias in int32, with the zero-point term folded into the
bias ahead of time: q_bias = q_b - Z_X sum(q_W) (sum over each output channel's inputs / kernel).
That folding is only right if every input the kernel sees has code Z_X where the real input is 0,
so a convolution's zero padding pads the *codes* with Z_X. `Requant` then maps acc onto the next
grid with the fixed-point multiplier M = S_W S_X / S_Y = M0 2^-31 2^-n (one per output channel for
per-channel weights); a ReLU is fused by clamping to [Z_Y, q_max].
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrize import is_parametrized, type_before_parametrizations

from ..parametrize import encode_chain
from .qvalue import Grid, QInfo, UnsupportedModelError
from .requant import INT32_MAX, quantize_multiplier, requantize

CONV_FUNCTIONS = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
LAYER_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass
class Requant:
    """q -> clamp(Z_out + M (q - Z_in), lo, hi), M = M0 2^-31 2^-shift per element (broadcast)."""

    m0: torch.Tensor
    shift: torch.Tensor
    zero_point_in: int
    zero_point_out: int
    lo: int
    hi: int

    @classmethod
    def onto(cls, source: QInfo, grid: Grid, relu: bool = False) -> Requant:
        """Rescale values described by `source` onto `grid`: M = S_source / S_grid (float64)."""
        m0, shift = quantize_multiplier(source.scale / float(grid.scale))
        lo = grid.zero_point if relu else grid.q_min
        return cls(m0, shift, source.zero_point, grid.zero_point, max(lo, grid.q_min), grid.q_max)

    def __call__(self, q: torch.Tensor) -> torch.Tensor:
        return requantize(q - self.zero_point_in, self.m0, self.shift, self.zero_point_out, self.lo, self.hi)


def _weight_codes(layer: nn.Module, where: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(int64 codes, float64 per-output-channel scale) of a symmetric, per tensor / channel weight."""
    chain = encode_chain(layer, "weight") if is_parametrized(layer, "weight") else []
    if not chain or chain[-1].kind != "linear":
        kind = chain[-1].kind if chain else "float"
        raise UnsupportedModelError(f"{where}: weight is {kind!r}, the integer engine needs linear int codes "
                                    "(nc.LinearQuant, then nc.convert_)")
    encoded = chain[-1]
    granularity = encoded.meta.get("granularity", {})
    if granularity.get("kind") not in ("tensor", "channel") or granularity.get("axis", 0) != 0:
        raise UnsupportedModelError(f"{where}: weight granularity {granularity} is not supported "
                                    "(per tensor or per output channel only)")
    if bool((encoded.tensors["zero_point"] != 0).any()):
        raise UnsupportedModelError(f"{where}: asymmetric weights (Z_W != 0) are not supported")
    codes = encoded.tensors["codes"].to(torch.int64)
    out_channels = codes.shape[0]
    scale = encoded.tensors["scale"].double().flatten().expand(out_channels).clone() \
        if encoded.tensors["scale"].numel() == 1 else encoded.tensors["scale"].double().flatten()
    return codes, scale


def _bias_codes(layer: nn.Module, acc_scale: torch.Tensor, where: str) -> torch.Tensor:
    """int64 bias codes on the accumulator grid S_b = S_W S_X (zeros when the layer has no bias)."""
    if getattr(layer, "bias", None) is None:
        return torch.zeros(acc_scale.numel(), dtype=torch.int64)
    chain = encode_chain(layer, "bias") if is_parametrized(layer, "bias") else []
    if not chain or chain[-1].kind != "int32_bias":
        raise UnsupportedModelError(f"{where}: bias is not on the int32 grid S_b = S_W S_X (quantize with "
                                    "nc.LinearQuant(act_bits=...) so that it gets an int32 bias)")
    bias_scale = chain[-1].tensors["scale"].double().flatten()
    if not torch.allclose(bias_scale, acc_scale, rtol=1e-6, atol=0):
        raise UnsupportedModelError(f"{where}: bias scale differs from S_W S_X (was the input quantizer changed "
                                    "after the bias was quantized?)")
    return chain[-1].tensors["codes"].to(torch.int64).flatten()


def _conv_pads(layer: nn.Module, weight: torch.Tensor, where: str) -> list[int]:
    """F.pad amounts (last dimension first) for the layer's zero padding."""
    if layer.padding_mode != "zeros":
        raise UnsupportedModelError(f"{where}: padding_mode={layer.padding_mode!r} (only zero padding)")
    kernel = weight.shape[2:]
    if layer.padding == "valid":
        return [0] * (2 * len(kernel))
    if layer.padding == "same":
        total = [d * (k - 1) for d, k in zip(layer.dilation, kernel)]
        pairs = [(t // 2, t - t // 2) for t in total]
    else:
        pairs = [(p, p) for p in layer.padding]
    return [amount for pair in reversed(pairs) for amount in pair]


@dataclass
class IntegerLayer:
    """One Linear / Conv layer in integers: acc = q_W (*) pad(q_X, Z_X) + q_bias, int32 range checked."""

    name: str
    weight: torch.Tensor       # int64 codes q_W
    bias: torch.Tensor         # int64 q_bias = q_b - Z_X sum(q_W)
    grid: Grid                 # the input grid (S_X, Z_X)
    weight_scale: torch.Tensor  # float64 S_W[c], one per output channel
    acc_scale: torch.Tensor    # float64 S_X S_W[c]
    conv: dict | None = None   # stride, dilation, groups, pads for convolutions

    @classmethod
    def from_module(cls, layer: nn.Module, name: str) -> IntegerLayer:
        where = f"layer {name!r} ({type_before_parametrizations(layer).__name__})"
        if not isinstance(layer, LAYER_TYPES):
            raise UnsupportedModelError(f"{where}: only Linear and Conv1d/2d/3d layers run in integers")
        grid = Grid.of_layer(layer, where)
        weight, weight_scale = _weight_codes(layer, where)
        acc_scale = grid.scale.double() * weight_scale
        q_bias = _bias_codes(layer, acc_scale, where) - grid.zero_point * weight.flatten(1).sum(1)
        conv = None
        if isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            conv = {"stride": layer.stride, "dilation": layer.dilation, "groups": layer.groups,
                    "pads": _conv_pads(layer, weight, where)}
        return cls(name, weight, q_bias, grid, weight_scale, acc_scale, conv)

    def acc_info(self) -> QInfo:
        """The accumulator's meaning: scale S_X S_W[c] along the channel dimension, Z = 0."""
        shape = (-1,) if self.conv is None else (1, -1, *[1] * (self.weight.dim() - 2))
        return QInfo("acc", self.acc_scale.reshape(shape))

    def real_parameters(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(S_W q_W, S_W S_X q_b) in float64: the weight and bias the fake-quantized layer means."""
        shape = (-1, *[1] * (self.weight.dim() - 1))
        q_b = self.bias + self.grid.zero_point * self.weight.flatten(1).sum(1)
        return self.weight.double() * self.weight_scale.view(shape), q_b.double() * self.acc_scale

    def accumulate(self, codes: torch.Tensor) -> torch.Tensor:
        """The int32 accumulator (held in int64) of the layer for input codes on its grid."""
        if self.conv is None:
            acc = torch.matmul(codes, self.weight.t()) + self.bias
        else:
            dims = self.weight.dim() - 2
            padded = F.pad(codes, self.conv["pads"], value=self.grid.zero_point) if any(self.conv["pads"]) else codes
            acc = CONV_FUNCTIONS[dims](padded, self.weight, None, self.conv["stride"], 0, self.conv["dilation"],
                                       self.conv["groups"])
            acc = acc + self.bias.view(1, -1, *[1] * dims)
        if acc.numel() and int(acc.abs().max()) > INT32_MAX:
            raise OverflowError(f"layer {self.name!r}: the accumulator exceeds the int32 range")
        return acc
