"""FP8 training: E4M3 weights and activations forward, E5M2 gradients backward (Micikevicius et al.,
"FP8 Formats for Deep Learning", 2022; lecture "Training FP8 model": train as usual with the same
hyperparameters; Nvidia FP8 E4M3 for weights / activations (max 448), E5M2 for gradients in the
backward (max 57344)).

Scaling is per tensor and amax-based: s = amax / fmt.max, so the largest magnitude lands on the
format's largest value, then x -> s Q_fmt(x / s). By default the amax is the current tensor's
("just-in-time" scaling). Activations may instead use delayed scaling (`amax_history=N`): s comes
from the largest amax of the last N steps (Transformer Engine's recipe; values above it saturate).
Weights may be block-scaled: one shared scale per output channel (`weight_scaling="channel"`).

- `round_grad(x, fmt, scaling)`: identity forward; backward rounds the incoming gradient to `fmt`
  (E5M2) with its own just-in-time per-tensor scale (`GradRound`).
- `FP8Weight` (kind "fp8_train"): w -> round_grad(s Q_e4m3(w / s)), s recomputed from w at every
  call; `encode` / `decode` as `FloatQuant` (uint8 codes + scale).
- `FP8ActQuantizer`: a layer's input -> round_grad(s Q_e4m3(x / s)).
- `FP8Training` ("fp8_train"): the Method attaching both to every targeted layer.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..config import Context, Method
from ..numerics import FloatFormat, float_format, quantize_float
from ..parametrize import attach, transform_kind
from ..registry import register
from ..validate import UserError, check_choice, check_int_range
from .activation import ActQuantizer, attach_input_quantizer
from .floating import FloatQuant, amax_scale, fake_float
from .ptq import quantizable_layers

FP8_FORMATS = ("fp8_e4m3", "fp8_e5m2")
WEIGHT_SCALINGS = ("tensor", "channel", "none")
GRAD_SCALINGS = ("tensor", "none")


def scaled_round(x: torch.Tensor, fmt: FloatFormat, scaling: str) -> torch.Tensor:
    """s Q_fmt(clamp(x / s)) with s = amax / fmt.max per tensor (or s = 1 for "none"); no autograd."""
    scale = amax_scale(x, fmt, scaling)
    v = x if scale is None else x / scale
    q = quantize_float(torch.clamp(v, -fmt.max_value, fmt.max_value), fmt)
    return q if scale is None else q * scale


class GradRound(torch.autograd.Function):
    """Identity forward; the backward rounds the incoming gradient to `fmt` (E5M2 in FP8 training)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, fmt: FloatFormat, scaling: str) -> torch.Tensor:  # type: ignore[override]
        ctx.fmt, ctx.scaling = fmt, scaling
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:  # type: ignore[override]
        return scaled_round(grad, ctx.fmt, ctx.scaling), None, None


def round_grad(x: torch.Tensor, fmt: FloatFormat, scaling: str = "tensor") -> torch.Tensor:
    """x forward; dL/dx rounded to `fmt` (with a just-in-time per-tensor scale unless "none")."""
    return GradRound.apply(x, fmt, scaling)


@transform_kind("fp8_train")
class FP8Weight(FloatQuant):
    """w -> round_grad(s Q_fmt(w / s)) with s = amax / fmt.max recomputed from w at every call (per
    tensor, or per output channel = block-scaled); the buffer `scale` keeps the last one."""

    def __init__(self, w: torch.Tensor, fmt: FloatFormat, scaling: str = "tensor",
                 grad_fmt: FloatFormat | None = None, grad_scaling: str = "tensor"):
        super().__init__(fmt, amax_scale(w, fmt, scaling))
        self.scaling, self.grad_fmt, self.grad_scaling = scaling, grad_fmt, grad_scaling

    def _rescale(self, w: torch.Tensor) -> None:
        scale = amax_scale(w, self.fmt, self.scaling)
        if scale is not None:
            with torch.no_grad():
                self.scale.copy_(scale)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        self._rescale(w)
        out = fake_float(w, self.fmt, self.scale)
        return out if self.grad_fmt is None else round_grad(out, self.grad_fmt, self.grad_scaling)

    def encode(self, w: torch.Tensor):
        self._rescale(w)
        return super().encode(w)

    def extra_repr(self) -> str:
        grad = self.grad_fmt.name if self.grad_fmt is not None else "float"
        return f"format={self.fmt.name}, scaling={self.scaling} (just-in-time), grad={grad}"


class FP8ActQuantizer(ActQuantizer):
    """A layer's input -> round_grad(s Q_fmt(x / s)), s = amax / fmt.max per tensor: the current
    input's amax (`amax_history=0`, just-in-time) or the largest of the last N training steps'
    (delayed scaling; the buffer `amax_history`). In eval mode delayed scaling uses the history as is."""

    def __init__(self, fmt: FloatFormat, grad_fmt: FloatFormat | None, amax_history: int = 0,
                 grad_scaling: str = "tensor"):
        super().__init__(spec=None)  # type: ignore[arg-type]  # a float format, not an IntSpec
        self.fmt, self.grad_fmt, self.grad_scaling = fmt, grad_fmt, grad_scaling
        self.register_buffer("amax_history", torch.zeros(amax_history) if amax_history else None)

    def _scale(self, x: torch.Tensor) -> torch.Tensor:
        amax = x.detach().abs().amax().float()
        if self.amax_history is not None:
            history = self.amax_history
            if self.training or not bool((history > 0).any()):
                with torch.no_grad():
                    if not bool((history > 0).any()):
                        history.fill_(float(amax))  # first step: nothing recorded yet
                    scale_amax = history.amax().clone()
                    history.copy_(torch.roll(history, 1))
                    history[0] = amax
                amax = scale_amax
            else:
                amax = history.amax()
        scale = amax / self.fmt.max_value
        return torch.where(scale > 0, scale, torch.ones_like(scale))

    def qparams(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scale = self._scale(x)
        return scale, torch.zeros_like(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = fake_float(x, self.fmt, self._scale(x))
        return out if self.grad_fmt is None else round_grad(out, self.grad_fmt, self.grad_scaling)

    def extra_repr(self) -> str:
        how = "just-in-time" if self.amax_history is None else f"delayed, history {self.amax_history.numel()}"
        grad = self.grad_fmt.name if self.grad_fmt is not None else "float"
        return f"format={self.fmt.name}, per-tensor scale ({how}), grad={grad}"


@register("fp8_train")
@dataclass(frozen=True, kw_only=True)
class FP8Training(Method):
    """Train in FP8: weights and inputs of every targeted layer in `weight_format` / `act_format`
    (E4M3) forward, the gradients reaching them rounded to `grad_format` (E5M2) backward.

    Args:
        weight_scaling: "tensor" (one amax scale per tensor), "channel" (block-scaled: one per
            output channel) or "none".
        amax_history: 0 for just-in-time activation scaling, N > 0 for delayed scaling over N steps.
        act_format / grad_format: None keeps activations / gradients in float32.
    Example:
        >>> import nncompress as nc, torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(8, 4))
        >>> _ = nc.apply_(net, FP8Training())
        >>> from nncompress.parametrize import decode, encode_chain
        >>> stored = encode_chain(net[0])[-1]          # FP8 E4M3 bit codes + the amax scale
        >>> stored.tensors["codes"].dtype, torch.equal(decode(stored), net[0].weight)
        (torch.uint8, True)
    """

    weight_format: str = "fp8_e4m3"
    act_format: str | None = "fp8_e4m3"
    grad_format: str | None = "fp8_e5m2"
    weight_scaling: str = "tensor"
    grad_scaling: str = "tensor"
    amax_history: int = 0

    def __post_init__(self) -> None:
        check_choice("weight_format", self.weight_format, FP8_FORMATS)
        if self.act_format is not None:
            check_choice("act_format", self.act_format, FP8_FORMATS)
        if self.grad_format is not None:
            check_choice("grad_format", self.grad_format, FP8_FORMATS)
        check_choice("weight_scaling", self.weight_scaling, WEIGHT_SCALINGS)
        check_choice("grad_scaling", self.grad_scaling, GRAD_SCALINGS)
        check_int_range("amax_history", self.amax_history, 0, 4096)
        if self.amax_history and self.act_format is None:
            raise UserError(f"amax_history={self.amax_history} scales activations, but act_format is None")

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        layers = quantizable_layers(self, model, activations=self.act_format is not None)
        fmt = float_format(self.weight_format)
        grad = float_format(self.grad_format) if self.grad_format is not None else None
        for name, layer in layers.items():
            attach(layer, FP8Weight(layer.weight, fmt, self.weight_scaling, grad, self.grad_scaling), layer_name=name)
            if self.act_format is not None:
                quantizer = FP8ActQuantizer(float_format(self.act_format), grad, self.amax_history, self.grad_scaling)
                attach_input_quantizer(layer, quantizer, layer_name=name)
        ctx.record(self, layers=list(layers), weight_format=self.weight_format, act_format=self.act_format,
                   grad_format=self.grad_format, weight_scaling=self.weight_scaling,
                   act_scaling="just-in-time" if not self.amax_history else f"delayed ({self.amax_history})")
        return model
