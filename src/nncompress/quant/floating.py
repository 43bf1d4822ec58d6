"""Model-level number formats: weights (and activations) rounded to a float or fixed-point format.

Lecture "Numeric data types" (fp16, bf16, FP8 E4M3 / E5M2, FP4 E2M1 / E1M2 / E3M0, fixed point;
formats in `numerics.py`) and the FP8 section of the quantization lecture ("Representing a real
value in FP8", Micikevicius et al. 2022).

- `FloatQuant` (kind "float"): w -> s Q_fmt(w / s). With scaling, s = max|w| / fmt.max per output
  channel or per tensor (any float32 value, not a power of two), so the largest weight lands on the
  format's largest value, the usual FP8 / FP4 weight scaling; without it s = 1. `encode` stores
  the format's bit codes (uint8 for formats of at most 8 bits, the int16 bit pattern for fp16 /
  bf16) and s; `decode` gives back exactly what `forward` computes.
- `FixedQuant` (kind "fixed"): w -> clamp(round(w 2^f), q_min, q_max) 2^-f, an N-bit integer with f
  fractional bits. f is given, or chosen per channel / tensor as the largest f with
  max|w| 2^f <= q_max (dynamic fixed point, Courbariaux et al. 2015); stored as int codes + f.
- `FloatActQuantizer`: a layer's input rounded to a float format, with a per-tensor scale
  s = max|x| / fmt.max from min-max calibration, or unscaled.
- `FormatQuant` ("format"): the Method that applies them.
Gradients pass straight through the rounding (STE) and are zero where a value is clipped.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..analysis.calibrate import observe_inputs
from ..analysis.observers import make_observer
from ..config import Context, Method
from ..numerics import (FLOAT_FORMATS, FloatFormat, bits_to_float, float_format, float_to_bits, int_range,
                        quantize_float)
from ..parametrize import Encoded, WeightTransform, attach, transform_kind
from ..registry import register
from ..validate import UserError, check_choice, check_int_range
from .activation import ActQuantizer, attach_input_quantizer
from .primitives import TINY, int_dtype, round_ste
from .ptq import quantizable_layers

FLOAT_WEIGHT_FORMATS = tuple(name for name in FLOAT_FORMATS if name != "fp32")
WEIGHT_FORMATS = (*FLOAT_WEIGHT_FORMATS, "fixed")
SCALINGS = ("auto", "channel", "tensor", "none")
ACT_SCALINGS = ("auto", "tensor", "none")
FRAC_BITS_RANGE = (-16, 31)


class _FloatRoundSTE(torch.autograd.Function):
    """quantize_float(x) forward (exactly), identity backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, fmt: FloatFormat) -> torch.Tensor:  # type: ignore[override]
        return quantize_float(x, fmt)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        return grad, None


def fake_float(x: torch.Tensor, fmt: FloatFormat, scale: torch.Tensor | None = None) -> torch.Tensor:
    """s Q_fmt(clamp(x / s, -max, max)): exact rounding forward, straight-through backward (zero
    gradient where clipped); `scale=None` means s = 1."""
    v = x if scale is None else x / scale
    q = _FloatRoundSTE.apply(torch.clamp(v, -fmt.max_value, fmt.max_value), fmt)
    return q if scale is None else q * scale


def amax_scale(x: torch.Tensor, fmt: FloatFormat, scaling: str) -> torch.Tensor | None:
    """s = max|x| / fmt.max per output channel ("channel", shaped to broadcast) or per tensor
    ("tensor"); None for "none". An all-zero slice gets s = 1."""
    if scaling == "none":
        return None
    x = x.detach().abs().float()
    amax = x.amax() if scaling == "tensor" else x.amax(tuple(range(1, x.dim())), keepdim=True)
    scale = amax / fmt.max_value
    return torch.where(scale > TINY, scale, torch.ones_like(scale))


def _code_storage(codes: torch.Tensor, fmt: FloatFormat) -> tuple[torch.Tensor, list[int]]:
    """Bit codes as stored: uint8 for <= 8-bit formats, the int16 bit pattern for 16-bit ones;
    returns (tensor, [lo, hi] of the stored integers)."""
    if fmt.bits <= 8:
        return codes.to(torch.uint8), [0, (1 << fmt.bits) - 1]
    wrapped = torch.where(codes >= 1 << 15, codes - (1 << 16), codes)
    return wrapped.to(torch.int16), [-(1 << 15), (1 << 15) - 1]


@transform_kind("float")
class FloatQuant(WeightTransform):
    """w -> s Q_fmt(w / s), s a buffer `scale` (per channel or tensor) or None (unscaled)."""

    def __init__(self, fmt: FloatFormat, scale: torch.Tensor | None = None):
        super().__init__()
        self.fmt = fmt
        self.register_buffer("scale", None if scale is None else scale.detach().clone().float())

    @classmethod
    def fit(cls, w: torch.Tensor, fmt: FloatFormat, scaling: str = "channel") -> FloatQuant:
        """Scale so max|w| (per `scaling`: channel, tensor or none) maps to the format's max."""
        return cls(fmt, amax_scale(w, fmt, scaling))

    @property
    def storage_bits(self) -> int:  # type: ignore[override]
        return self.fmt.bits

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return fake_float(w, self.fmt, self.scale)

    def encode(self, w: torch.Tensor) -> Encoded:
        """The format's bit codes of Q_fmt(w / s) and the scale s."""
        w = w.detach().float()
        v = w if self.scale is None else w / self.scale
        values = quantize_float(torch.clamp(v, -self.fmt.max_value, self.fmt.max_value), self.fmt)
        if not torch.isfinite(values).all():
            raise UserError(f"FloatQuant({self.fmt.name}): the weight holds NaN or inf; a format code cannot store it")
        codes, code_range = _code_storage(float_to_bits(values, self.fmt), self.fmt)
        tensors = {"codes": codes} if self.scale is None else {"codes": codes, "scale": self.scale.clone()}
        meta = {"shape": list(w.shape), "format": self.fmt.name, "bits": self.fmt.bits,
                "int_ranges": {"codes": code_range}}
        return Encoded(self.kind, tensors, meta)

    @classmethod
    def decode(cls, encoded: Encoded) -> torch.Tensor:
        values = bits_to_float(encoded.tensors["codes"], float_format(encoded.meta["format"]))
        scale = encoded.tensors.get("scale")
        return values if scale is None else values * scale.float()

    def extra_repr(self) -> str:
        scaling = "none" if self.scale is None else "tensor" if self.scale.dim() == 0 else "channel"
        return f"format={self.fmt.name}, scaling={scaling}"


def frac_bits_for(w: torch.Tensor, bits: int, scaling: str) -> torch.Tensor:
    """Dynamic fixed point: per output channel ("channel") or tensor, the largest f with
    max|w| 2^f <= q_max = 2^(N-1) - 1, i.e. f = floor(log2(q_max / max|w|)); int32."""
    w = w.detach().abs().float()
    amax = w.amax() if scaling == "tensor" else w.amax(tuple(range(1, w.dim())), keepdim=True)
    q_max = int_range(bits)[1]
    f = torch.floor(torch.log2(q_max / torch.where(amax > 0, amax, torch.full_like(amax, float(q_max)))))
    return f.clamp(*FRAC_BITS_RANGE).to(torch.int32)


@transform_kind("fixed")
class FixedQuant(WeightTransform):
    """w -> clamp(round(w 2^f), q_min, q_max) 2^-f with an int buffer `frac_bits` (scalar or per channel)."""

    def __init__(self, bits: int, frac_bits: torch.Tensor | int):
        super().__init__()
        self.bits = bits
        self.register_buffer("frac_bits", torch.as_tensor(frac_bits, dtype=torch.int32).clone())

    @property
    def storage_bits(self) -> int:  # type: ignore[override]
        return self.bits

    def _codes(self, w: torch.Tensor) -> torch.Tensor:
        return torch.clamp(round_ste(w * torch.exp2(self.frac_bits.float())), *int_range(self.bits))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return self._codes(w) * torch.exp2(-self.frac_bits.float())

    def encode(self, w: torch.Tensor) -> Encoded:
        """N-bit integer codes and the fractional bits f."""
        codes = self._codes(w.detach().float()).to(int_dtype(self.bits, True))
        meta = {"shape": list(w.shape), "bits": self.bits,
                "int_ranges": {"codes": list(int_range(self.bits)), "frac_bits": list(FRAC_BITS_RANGE)}}
        return Encoded(self.kind, {"codes": codes, "frac_bits": self.frac_bits.clone()}, meta)

    @classmethod
    def decode(cls, encoded: Encoded) -> torch.Tensor:
        return encoded.tensors["codes"].float() * torch.exp2(-encoded.tensors["frac_bits"].float())

    def extra_repr(self) -> str:
        return f"bits={self.bits}, frac_bits={self.frac_bits.flatten()[:4].tolist()}"


class FloatActQuantizer(ActQuantizer):
    """A layer's input rounded to `fmt`: x -> s Q_fmt(x / s) with a calibrated per-tensor buffer
    `scale` (s = max|x| / fmt.max), or unscaled (scale None)."""

    static = True

    def __init__(self, fmt: FloatFormat, scale: torch.Tensor | None = None):
        super().__init__(spec=None)  # type: ignore[arg-type]  # a float format, not an IntSpec
        self.fmt = fmt
        self.register_buffer("scale", None if scale is None else scale.detach().clone().float())

    def qparams(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        scale = self.scale if self.scale is not None else torch.ones(())
        return scale, torch.zeros_like(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.smooth is not None:
            x = x / self.smooth
        return fake_float(x, self.fmt, self.scale)

    def extra_repr(self) -> str:
        scale = "unscaled" if self.scale is None else f"scale={float(self.scale):.4g}"
        return f"format={self.fmt.name}, static, {scale}"


@register("format")
@dataclass(frozen=True, kw_only=True)
class FormatQuant(Method):
    """Round weights (and optionally activations) to a number format.

    Args:
        weight_format: fp8_e4m3, fp8_e5m2, fp16, bf16, fp4_e2m1, fp4_e1m2, fp4_e3m0 or fixed.
        bits: total bits of a fixed-point weight (2..16); weight_format="fixed" only.
        frac_bits: fractional bits of every fixed-point weight; None picks them per channel / tensor
            from max|w| (dynamic fixed point); weight_format="fixed" only.
        act_format: a float format for every targeted layer's input, or None (weights only).
        scaling: "channel" / "tensor" (s = max|w| / max per output channel / tensor; for fixed point,
            f chosen per channel / tensor), "none", or "auto": channel for 8- and 4-bit formats and for
            fixed point without frac_bits, none for fp16 / bf16 and for a given frac_bits.
        act_scaling: "tensor" (s = max|x| / max from min-max calibration on data), "none", or
            "auto": tensor for 8- and 4-bit formats, none for fp16 / bf16.
    Example:
        >>> import nncompress as nc, torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(16, 4))
        >>> _ = nc.quantize_(net, FormatQuant(weight_format="fp4_e2m1"))
        >>> steps = net[0].weight / net[0].parametrizations.weight[0].scale  # on the E2M1 grid
        >>> set(steps.abs().round(decimals=3).flatten().tolist()) <= {0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0}
        True
    """

    weight_format: str = "fp8_e4m3"
    bits: int = 8
    frac_bits: int | None = None
    act_format: str | None = None
    scaling: str = "auto"
    act_scaling: str = "auto"

    def __post_init__(self) -> None:
        check_choice("weight_format", self.weight_format, WEIGHT_FORMATS)
        check_choice("scaling", self.scaling, SCALINGS)
        if self.weight_format == "fixed":
            self._check_fixed()
        else:
            self._check_float_weights()
        if self.act_format is not None:
            check_choice("act_format", self.act_format, FLOAT_WEIGHT_FORMATS)
        check_choice("act_scaling", self.act_scaling, ACT_SCALINGS)
        if self.act_format is None and self.act_scaling != "auto":
            raise UserError(f"act_scaling={self.act_scaling!r} needs act_format (activations are not quantized)")
        if self.act_format is not None and self.act_scaling == "tensor" and float_format(self.act_format).bits > 8:
            raise UserError(f"act_scaling='tensor' is for 8- and 4-bit formats; act_format={self.act_format!r} "
                            "holds every float32 activation: use act_scaling='none' or 'auto'")

    def _check_fixed(self) -> None:
        check_int_range("bits", self.bits, 2, 16)
        if self.frac_bits is None:
            if self.scaling == "none":
                low, high = FRAC_BITS_RANGE
                raise UserError(f"weight_format='fixed' with scaling='none' needs frac_bits (an integer in [{low}, {high}]), "
                                "or scaling='channel' / 'tensor' to choose them")
            return
        check_int_range("frac_bits", self.frac_bits, *FRAC_BITS_RANGE)
        if self.scaling in ("channel", "tensor"):
            raise UserError(f"frac_bits={self.frac_bits} fixes the binary point of every weight, but scaling="
                            f"{self.scaling!r} chooses it per {self.scaling}: use scaling='none' (or 'auto'), "
                            "or leave frac_bits unset")

    def _check_float_weights(self) -> None:
        if self.bits != 8 or self.frac_bits is not None:
            raise UserError(f"bits={self.bits} / frac_bits={self.frac_bits} apply to weight_format='fixed' only; "
                            f"{self.weight_format} has {float_format(self.weight_format).bits} bits")
        if self.scaling in ("channel", "tensor") and float_format(self.weight_format).bits > 8:
            raise UserError(f"scaling={self.scaling!r} is for 8- and 4-bit formats; weight_format="
                            f"{self.weight_format!r} holds every float32 weight: use scaling='none' or 'auto'")

    def weight_scaling(self) -> str:
        """The scaling actually used ("auto" resolved)."""
        if self.scaling != "auto":
            return self.scaling
        if self.weight_format == "fixed":
            return "none" if self.frac_bits is not None else "channel"
        return "channel" if float_format(self.weight_format).bits <= 8 else "none"

    def activation_scaling(self) -> str | None:
        """"tensor" or "none" for the activations ("auto" resolved); None without act_format."""
        if self.act_format is None:
            return None
        if self.act_scaling != "auto":
            return self.act_scaling
        return "tensor" if float_format(self.act_format).bits <= 8 else "none"

    @property
    def needs(self) -> frozenset[str]:  # type: ignore[override]
        return frozenset({"data"}) if self.activation_scaling() == "tensor" else frozenset()

    def weight_transform(self, w: torch.Tensor) -> WeightTransform:
        """The FloatQuant / FixedQuant fitted to weight `w`."""
        scaling = self.weight_scaling()
        if self.weight_format == "fixed":
            frac = self.frac_bits if scaling == "none" else frac_bits_for(w, self.bits, scaling)
            return FixedQuant(self.bits, frac)  # type: ignore[arg-type]
        return FloatQuant.fit(w, float_format(self.weight_format), scaling)

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        layers = quantizable_layers(self, model, activations=self.act_format is not None)
        act_scales = self._calibrate(model, layers, ctx)
        for name, layer in layers.items():
            attach(layer, self.weight_transform(layer.weight), layer_name=name)
            if self.act_format is not None:
                quantizer = FloatActQuantizer(float_format(self.act_format), act_scales.get(name))
                attach_input_quantizer(layer, quantizer, layer_name=name)
        ctx.record(self, layers=list(layers), weight_format=self.weight_format, act_format=self.act_format,
                   scaling=self.weight_scaling(), act_scaling=self.activation_scaling())
        return model

    def _calibrate(self, model: nn.Module, layers: dict[str, nn.Module], ctx: Context) -> dict[str, torch.Tensor]:
        """Per-layer input scale s = max|x| / fmt.max (min-max calibration on ctx.data)."""
        if self.activation_scaling() != "tensor":
            return {}
        observers = observe_inputs(model, {n: make_observer("minmax") for n in layers}, ctx.data or [])
        fmt = float_format(self.act_format)  # type: ignore[arg-type]
        scales = {}
        for name, observer in observers.items():
            lo, hi = observer.range()
            scales[name] = amax_scale(torch.maximum(lo.abs(), hi.abs()), fmt, "tensor")
        return scales
