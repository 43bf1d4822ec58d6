"""LSQ: Learned Step size Quantization (Esser et al., ICLR 2020, arXiv:1902.08153; lecture "LSQ: Learned
Step size Quantization" in seeds 000 and 002).

With the original value v, the step size s and Q_N / Q_P the numbers of negative / positive levels:
    v_bar = round(clip(v / s, -Q_N, Q_P)),          v_hat = v_bar * s                (eqs. 1, 2)
    d v_hat / d s = -v/s + round(v/s)   if -Q_N < v/s < Q_P
                  = -Q_N                if v/s <= -Q_N
                  = Q_P                 if v/s >= Q_P                                  (eq. 3)
    d v_hat / d v = 1 inside (-Q_N, Q_P), 0 at the clip ends (straight-through estimator)
The step's gradient is multiplied by g = 1 / sqrt(N Q_P) (N: weights of the layer, or of one output
channel for per-channel steps; features of one sample for activations), and s starts at
2 <|v|> / sqrt(Q_P). Weights are signed (Q_N = 2^(b-1), Q_P = 2^(b-1) - 1); activations are
unsigned (Q_N = 0, Q_P = 2^b - 1) after a ReLU and signed when the calibration data has negative
values (a network's input).

`LSQWeight` is a weight parametrization whose `encode` gives kind "linear" (integer codes, the step
as scale, zero point 0), so `convert_`, `.nnc`, the integer engine and ONNX export read it as any
symmetric linear weight. `LSQActQuantizer` is an `ActQuantizer` with a learned scalar step; after
training it is a fixed static grid (`static = True`, `scale`, `zero_point`) for the engine.
Both compute v_hat exactly as v_bar * s, so `decode(encode(w))` equals `forward(w)` bit for bit.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..parametrize import Encoded, WeightTransform
from ..registry import register
from ..validate import UserError, check_choice
from .activation import ActQuantizer
from .fake import FakeQuant
from .granularity import Granularity, PerChannel, PerTensor, granularity_to_meta
from .primitives import IntSpec, check_finite, int_dtype
from .qat import QATMethod, freezable_codes


class LSQFunction(torch.autograd.Function):
    """v_hat = round(clip(v / s, -Q_N, Q_P)) * s with LSQ's gradients (eq. 3), the step's scaled by g.

    Example (the lecture's piecewise gradient, g = 1):
        >>> v = torch.tensor([0.3, 1.3, -5.0, 9.0]); s = torch.tensor(1.0, requires_grad=True)
        >>> LSQFunction.apply(v, s, 4, 3, 1.0).sum().backward()
        >>> round(float(s.grad), 4)  # (-0.3 + 0) + (-1.3 + 1) + (-4) + 3
        -1.6
    """

    @staticmethod
    def forward(ctx, v: torch.Tensor, step: torch.Tensor, q_n: int, q_p: int, grad_scale: float) -> torch.Tensor:  # type: ignore[override]
        ratio = v / step
        codes = torch.clamp(torch.round(ratio), -q_n, q_p)
        ctx.save_for_backward(ratio, codes)
        ctx.q_n, ctx.q_p, ctx.grad_scale, ctx.step_shape = q_n, q_p, grad_scale, step.shape
        return codes * step

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        ratio, codes = ctx.saved_tensors
        inside = (ratio > -ctx.q_n) & (ratio < ctx.q_p)
        grad_v = grad * inside
        d_step = torch.where(inside, codes - ratio, torch.where(ratio <= -ctx.q_n, float(-ctx.q_n), float(ctx.q_p)))
        grad_step = _reduce_to(grad * d_step, ctx.step_shape) * ctx.grad_scale
        return grad_v, grad_step, None, None, None


def _reduce_to(x: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Sum `x` over the dimensions along which a tensor of `shape` was broadcast."""
    if x.shape == shape:
        return x
    lead = x.dim() - len(shape)
    dims = tuple(range(lead)) + tuple(lead + i for i, n in enumerate(shape) if n == 1 and x.shape[lead + i] != 1)
    return x.sum(dims, keepdim=True).reshape(shape) if dims else x.reshape(shape)


def lsq_quantize(v: torch.Tensor, step: torch.Tensor, q_n: int, q_p: int, grad_scale: float = 1.0) -> torch.Tensor:
    """LSQ's fake quantization v_hat of `v` (see `LSQFunction`)."""
    return LSQFunction.apply(v, step, q_n, q_p, grad_scale)


def positive_step(step: torch.Tensor) -> torch.Tensor:
    """|s| (at least 1e-12): the step a learned parameter stands for. Gradient descent can push a step
    through zero (seen at 2 bits on ResNet-20); |s| keeps the grid the same (round(v / s) s is odd in
    s only up to the asymmetric clip) and the scale the integer engine reads positive."""
    return step.abs().clamp_min(1e-12)


def lsq_levels(bits: int, signed: bool) -> tuple[int, int]:
    """(Q_N, Q_P): signed b bits -> (2^(b-1), 2^(b-1) - 1); unsigned -> (0, 2^b - 1)."""
    return (2 ** (bits - 1), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)


def grad_scale(n: int, q_p: int) -> float:
    """LSQ's step-gradient scale g = 1 / sqrt(N Q_P)."""
    return 1.0 / math.sqrt(max(n, 1) * q_p)


def initial_step(v: torch.Tensor, q_p: int, dims: tuple[int, ...] | None = None) -> torch.Tensor:
    """LSQ's initialisation s = 2 <|v|> / sqrt(Q_P) (mean over `dims`, all by default); a zero
    mean (an all-zero tensor) gives s = 1 so that the step stays positive."""
    mean_abs = v.detach().abs().mean() if dims is None else v.detach().abs().mean(dims, keepdim=True)
    step = 2 * mean_abs / math.sqrt(q_p)
    return torch.where(step > 0, step, torch.ones_like(step)).float()


def mse_step(v: torch.Tensor, q_n: int, q_p: int, dims: tuple[int, ...] | None = None,
             candidates: int = 100) -> torch.Tensor:
    """The step s that minimises the quantization error mean (v_hat(s) - v)^2 (mean over `dims`, all
    by default), searched over s = r max|v| / Q_P for r = 1/candidates, 2/candidates, ..., 1: the
    MSE range setting of Nagel et al.'s white paper (arXiv:2106.08295, sec. 3.4), which LSQ+
    (Bhalgat et al. 2020, sec. 3.3) uses to initialise learned steps. At 3 bits and below the paper's
    2 <|v|> / sqrt(Q_P) can start far from any good grid (a ResNet-20 at W3A3 started QAT at 72 %
    where min-max PTQ gave 96 %); this start is the PTQ optimum of the same grid. All-zero slices get s = 1.

    Example (2 bits: the paper's start has about twice the error of the least-error step):
        >>> v = torch.linspace(-1, 1, 201)
        >>> err = lambda s: float(((torch.clamp(torch.round(v / s), -2, 1) * s - v) ** 2).mean())
        >>> round(err(mse_step(v, 2, 1)), 4), round(err(initial_step(v, 1)), 4)
        (0.0362, 0.0842)
    """
    v = v.detach().float()
    amax = v.abs().amax() if dims is None else v.abs().amax(dims, keepdim=True)
    best_step, best_err = torch.ones_like(amax), torch.full_like(amax, float("inf"))
    for ratio in torch.arange(1, candidates + 1, dtype=torch.float32) / candidates:
        step = (amax * ratio / q_p).clamp_min(1e-12)
        sq = (torch.clamp(torch.round(v / step), -q_n, q_p) * step - v) ** 2
        err = sq.mean() if dims is None else sq.mean(dims, keepdim=True)
        better = err < best_err
        best_step, best_err = torch.where(better, step, best_step), torch.where(better, err, best_err)
    return torch.where(amax > 0, best_step, torch.ones_like(best_step))


INITS = ("lsq", "mse")


def first_step(v: torch.Tensor, q_n: int, q_p: int, init: str, dims: tuple[int, ...] | None = None) -> torch.Tensor:
    """The initial step of a learned grid: "lsq" = the paper's 2 <|v|> / sqrt(Q_P) (`initial_step`),
    "mse" = the step with the least quantization error (`mse_step`)."""
    return initial_step(v, q_p, dims) if init == "lsq" else mse_step(v, q_n, q_p, dims)


class LSQWeight(WeightTransform):
    """A weight quantized with a learned step per tensor or per output channel (parameter `step`).

    Weights whose codes oscillate can be frozen (`freeze_`, quant/oscillation.py): they then keep
    their frozen code whatever the latent weight does (and get no gradient).
    """

    kind = "linear"  # encodes as a symmetric linear weight: convert_, the engine and ONNX read it as one

    def __init__(self, w: torch.Tensor, bits: int, granularity: Granularity, init: str = "lsq"):
        super().__init__()
        if not isinstance(granularity, (PerTensor, PerChannel)):
            raise UserError(f"LSQ weight granularity {granularity} is not supported: use 'tensor' or 'channel'")
        check_finite(w, "weight")
        self.bits, self.granularity = bits, granularity
        self.q_n, self.q_p = lsq_levels(bits, signed=True)
        dims = granularity.reduce_dims(w) if isinstance(granularity, PerChannel) else None
        self.step = nn.Parameter(first_step(w, self.q_n, self.q_p, init, dims))
        per_step = w.numel() // self.step.numel()
        self.grad_scale = grad_scale(per_step, self.q_p)
        self.register_buffer("frozen", torch.zeros(w.shape, dtype=torch.bool))
        self.register_buffer("frozen_codes", torch.zeros(w.shape, dtype=int_dtype(bits, True)))

    @property
    def storage_bits(self) -> int:  # type: ignore[override]
        return self.bits

    @property
    def scale(self) -> torch.Tensor:
        """The step as a quantization scale (detached)."""
        return positive_step(self.step.detach())

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        step = positive_step(self.step)
        out = lsq_quantize(w, step, self.q_n, self.q_p, self.grad_scale)
        return freezable_codes(self, out, step)

    def codes(self, w: torch.Tensor) -> torch.Tensor:
        """The integer codes v_bar of `w` (frozen entries keep their frozen code), as float."""
        codes = torch.clamp(torch.round(w.detach() / self.scale), -self.q_n, self.q_p)
        return torch.where(self.frozen, self.frozen_codes.float(), codes)

    def encode(self, w: torch.Tensor) -> Encoded:
        codes = self.codes(w).to(int_dtype(self.bits, True))
        q_range = [-self.q_n, self.q_p]
        meta = {"shape": list(w.shape), "bits": self.bits, "signed": True, "q_range": q_range,
                "granularity": granularity_to_meta(self.granularity), "int_ranges": {"codes": q_range}}
        scale = self.scale.clone().float()
        return Encoded("linear", {"codes": codes, "scale": scale,
                                  "zero_point": torch.zeros_like(scale, dtype=torch.int32)}, meta)

    @classmethod
    def decode(cls, encoded: Encoded) -> torch.Tensor:
        return FakeQuant.decode(encoded)

    @torch.no_grad()
    def fold_channel_scale_(self, original: torch.Tensor, factor: torch.Tensor) -> int:
        """Multiply output channel c by `factor[c]` (a BatchNorm's f = g / sqrt(v + eps), folded after
        QAT) exactly on the grid: s_c <- s_c |f_c|, codes kept (negated where f_c < 0), the latent
        weight `original` set to code x step, so the layer now computes W f. A code -Q_N negated is
        out of range and is clamped to Q_P (returned: how many); a channel with f_c = 0 becomes zero."""
        if not isinstance(self.granularity, PerChannel) or self.granularity.axis % original.dim() != 0:
            raise UserError(f"folding a BatchNorm into a learned grid needs one step per output channel, "
                            f"not {self.granularity}: quantize with granularity='channel'")
        shape = (-1,) + (1,) * (original.dim() - 1)
        sign = torch.where(factor < 0, -1.0, 1.0).view(shape)
        flipped = self.codes(original) * sign
        codes = torch.clamp(flipped, -self.q_n, self.q_p) * (factor != 0).float().view(shape)
        step = torch.where(factor != 0, self.scale.flatten() * factor.abs(), self.scale.flatten())
        self.step.copy_(step.view_as(self.step))
        original.copy_(codes * self.scale)
        self.frozen_codes.copy_(codes.to(self.frozen_codes.dtype))
        return int((flipped > self.q_p).sum())

    def extra_repr(self) -> str:
        return f"bits={self.bits}, learned step, granularity={self.granularity}, frozen={int(self.frozen.sum())}"


class LSQActQuantizer(ActQuantizer):
    """An activation quantizer with a learned scalar step (parameter `step`), Z = 0.

    `scale` / `zero_point` give the static grid the integer engine and ONNX export read.
    """

    static = True

    def __init__(self, bits: int, signed: bool, step: torch.Tensor, features: int):
        super().__init__(IntSpec(bits=bits, signed=signed, symmetric=True, restricted=False))
        self.q_n, self.q_p = lsq_levels(bits, signed)
        self.step = nn.Parameter(torch.as_tensor(step, dtype=torch.float32).detach().clone().reshape(()))
        self.grad_scale = grad_scale(features, self.q_p)
        self.register_buffer("zero_point", torch.zeros(()))

    @property
    def scale(self) -> torch.Tensor:
        return positive_step(self.step.detach())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return lsq_quantize(x, positive_step(self.step), self.q_n, self.q_p, self.grad_scale)

    def extra_repr(self) -> str:
        sign = "signed" if self.spec.signed else "unsigned"
        return f"bits={self.spec.bits}, {sign}, learned step={float(self.scale):.4g}"


@register("lsq")
@dataclass(frozen=True, kw_only=True)
class LSQ(QATMethod):
    """Quantization-aware training with learned step sizes for weights and activations (Esser et al. 2020).

    Apply, then fine-tune the model (`nc.fit`, or `flows/qat.py`); the steps train with the weights.
    Args: see `QATMethod` (weight_bits, act_bits, granularity, layer_bits), and
        init: how the steps start: "lsq" = the paper's 2 <|v|> / sqrt(Q_P); "mse" = the step with
            the least quantization error on the weights / on the calibration inputs (`mse_step`,
            LSQ+'s initialisation).
    Example:
        >>> import nncompress as nc, torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
        >>> _ = nc.apply_(net, LSQ(weight_bits=3, act_bits=3), data=[torch.randn(16, 8)])
        >>> len(torch.unique(net[0].weight.detach() / net[0].parametrizations.weight[0].step.detach())) <= 8
        True
    """

    init: str = "lsq"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("init", self.init, INITS)

    def weight_quantizer(self, w: torch.Tensor, bits: int, granularity: Granularity) -> WeightTransform:
        return LSQWeight(w, bits, granularity, self.init)

    def act_quantizer(self, bits: int, stats: dict) -> ActQuantizer:
        signed = bool(stats["min"] < 0)
        q_n, q_p = lsq_levels(bits, signed)
        seen = stats["mean_abs"] if self.init == "lsq" else stats["sample"]
        return LSQActQuantizer(bits, signed, first_step(seen, q_n, q_p, self.init), stats["features"])
