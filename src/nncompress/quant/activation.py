"""Activation quantizers: one generic attachment (a forward pre-hook) plus pluggable quantizer modules.

A layer's input is fake-quantized by the `ActQuantizer` stored as its child `input_quantizer`; a
forward pre-hook runs it on the layer's first argument. Nothing wraps the layer, so it keeps its
name, its class and its `state_dict` keys (`fc1.weight`, plus `fc1.input_quantizer.scale`), and
methods compose: pruning, weight quantizers and activation quantizers all attach to the same layer.

Quantizers (lecture "Linear quantization"; calibration lecture for static ranges):
- `StaticQuantizer`: fixed `scale` / `zero_point` from calibration, r = S (q - Z).
- `DynamicQuantizer`: qparams from each input at run time, per tensor, per token (one scale per
  row of a Linear's input: the reduction index is the last dimension, so an integer kernel can
  apply the scale after the int32 dot product) or per sample (one per image for a Conv).
Learned quantizers (PACT's clip, LSQ's step) subclass `ActQuantizer` and keep their parameters as
`nn.Parameter`s, so they train with the model.
"""
from __future__ import annotations

import torch
from torch import nn

from ..parametrize import CompositionError
from ..validate import check_choice
from .primitives import IntSpec, choose_qparams, fake_quantize

DYNAMIC_GRANULARITIES = ("tensor", "token", "sample")


class ActQuantizer(nn.Module):
    """Base of activation quantizers: `qparams(x)` gives (scale, zero_point); `forward` fake-quantizes.

    `smooth` (SmoothQuant, Xiao et al. 2023): per-input-channel divisors applied before quantizing
    (the layer's weight columns were multiplied by the same factors).
    """

    static: bool = False

    def __init__(self, spec: IntSpec):
        super().__init__()
        self.spec = spec
        self.register_buffer("smooth", None)

    def qparams(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.smooth is not None:  # Linear layers only: channels are the last dimension
            x = x / self.smooth
        scale, zero_point = self.qparams(x)
        q_min, q_max = self.spec.q_range
        return fake_quantize(x, scale, zero_point, q_min, q_max)


class StaticQuantizer(ActQuantizer):
    """Fixed per-tensor qparams (buffers `scale`, `zero_point`), e.g. from a calibration observer."""

    static = True

    def __init__(self, spec: IntSpec, scale: torch.Tensor, zero_point: torch.Tensor):
        super().__init__(spec)
        self.register_buffer("scale", scale.detach().clone().float())
        self.register_buffer("zero_point", zero_point.detach().clone().float())

    def qparams(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.scale, self.zero_point

    def extra_repr(self) -> str:
        return f"bits={self.spec.bits}, static, scale={float(self.scale.flatten()[0]):.4g}"


class DynamicQuantizer(ActQuantizer):
    """Qparams from each input's own range: per "tensor", per "token" (rows of the last dimension,
    Linear inputs) or per "sample" (everything but the batch dimension, Conv inputs)."""

    def __init__(self, spec: IntSpec, per: str = "tensor"):
        super().__init__(spec)
        self.per = check_choice("per", per, DYNAMIC_GRANULARITIES)

    def qparams(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.detach()
        if self.per == "tensor":
            return choose_qparams(x.amin(), x.amax(), self.spec)
        rows = x.reshape(-1, x.shape[-1]) if self.per == "token" else x.reshape(x.shape[0], -1)
        scale, zero_point = choose_qparams(rows.amin(1), rows.amax(1), self.spec)
        shape = (*x.shape[:-1], 1) if self.per == "token" else (x.shape[0], *[1] * (x.dim() - 1))
        return scale.reshape(shape), zero_point.reshape(shape)

    def extra_repr(self) -> str:
        return f"bits={self.spec.bits}, dynamic per {self.per}"


def _quantize_input(module: nn.Module, args: tuple) -> tuple:
    """The forward pre-hook: the layer sees its input fake-quantized."""
    return (module.input_quantizer(args[0]), *args[1:])


def on_fixed_grid(quantizer: ActQuantizer | None) -> bool:
    """Whether the quantizer's input grid is one fixed integer grid once trained: a StaticQuantizer,
    or a learned one (PACT's clip, LSQ's step) with an integer spec. The integer engine and the ONNX
    export run those as static uint8 / int8 inputs."""
    return isinstance(quantizer, StaticQuantizer) or (
        getattr(quantizer, "static", False) and isinstance(getattr(quantizer, "spec", None), IntSpec))


def input_quantizer(layer: nn.Module) -> ActQuantizer | None:
    """The activation quantizer attached to `layer`, or None."""
    quantizer = getattr(layer, "input_quantizer", None)
    return quantizer if isinstance(quantizer, ActQuantizer) else None


def attach_input_quantizer(layer: nn.Module, quantizer: ActQuantizer, layer_name: str = "") -> ActQuantizer:
    """Quantize `layer`'s input with `quantizer` from now on; a second quantizer is an error."""
    existing = input_quantizer(layer)
    if existing is not None:
        raise CompositionError(f"{layer_name or type(layer).__name__}: its input is already quantized "
                               f"({type(existing).__name__}: {existing.extra_repr()}); call "
                               "nc.remove_quantization_(model) first, or leave the layer out with targets=Select(exclude=...)")
    layer.input_quantizer = quantizer
    layer.register_forward_pre_hook(_quantize_input)
    return quantizer


def detach_input_quantizer(layer: nn.Module) -> ActQuantizer | None:
    """Remove `layer`'s activation quantizer (and its hook); returns it, or None if there was none."""
    quantizer = input_quantizer(layer)
    if quantizer is None:
        return None
    del layer.input_quantizer
    for key, hook in list(layer._forward_pre_hooks.items()):
        if hook is _quantize_input:
            del layer._forward_pre_hooks[key]
    return quantizer
