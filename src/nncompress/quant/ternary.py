"""Ternary weights: TWN and TTQ (lecture 003 "Ternary weight networks", "Trained Ternary Quantization").

- TWN (Li, Zhang & Liu 2016): w_t in {-alpha, 0, +alpha}, the approximate minimiser of
  ||w - alpha w_t||^2: threshold Delta = 0.7 E|w| and alpha = mean of |w_i| over |w_i| > Delta
  (per layer). Trained with the straight-through estimator (identity gradient to w).
- TTQ (Zhu, Han, Mao & Dally, ICLR 2017): asymmetric learned levels. S1 normalise the latent
  weights by max|w|; S2 threshold Delta = t max|w| (t = 0.05); S3 assign +1 -> W^p, -1 -> -W^n;
  S4 SGD on W^p, W^n and the latent weights, with the paper's gradients (eq. 7, 8):
      dL/dW^p = sum_{i in I_p} dL/dw_t(i),   dL/dW^n = -sum_{i in I_n} dL/dw_t(i)
      dL/dw(i) = W^p dL/dw_t(i) (i in I_p),  dL/dw_t(i) (|w| <= Delta),  W^n dL/dw_t(i) (i in I_n)
  (w_t = -W^n on I_n, so the chain rule gives the minus sign that eq. 7 leaves implicit.)
  By default (`level_grad="mean"`) the optimizer sees eq. 7 divided by |I_p| (|I_n|): for SGD that is
  a per-level learning rate lr / |I_p|. With the plain sum the levels of LeNet-5's 400k-weight fc1
  take steps thousands of times their size at lr 0.02 (measured: the levels diverged to 1e6 and
  accuracy fell to 11.5% within one epoch); `level_grad="sum"` keeps the paper's raw gradient.
Both store 2 bits per weight (codes in {-1, 0, +1}, declared by `int_ranges`) plus the level(s).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..config import Context, Method
from ..parametrize import Encoded, WeightTransform, transform_kind
from ..registry import register
from ..validate import UserError, check_choice
from .binary import apply_binary, straight_through


LEVEL_GRADS = ("mean", "sum")


def twn_threshold(w: torch.Tensor, factor: float = 0.7) -> torch.Tensor:
    """Delta = factor * mean |w| (TWN's approximation, factor 0.7)."""
    return factor * w.abs().mean()


def twn_alpha(w: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """alpha = mean |w_i| over |w_i| > Delta (0 when no weight exceeds Delta)."""
    above = w.abs() > delta
    return (w.abs() * above).sum() / above.sum().clamp(min=1)


def ternary_codes(w: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """+1 where w > Delta, -1 where w < -Delta, else 0 (float)."""
    return (w > delta).to(w.dtype) - (w < -delta).to(w.dtype)


@transform_kind("twn")
class TernaryWeight(WeightTransform):
    """w -> alpha * t, t in {-1, 0, +1} by |w| > Delta (TWN), identity (STE) gradient to w.

        >>> w = torch.tensor([0.9, -0.1, 0.05, -0.7, 0.3])
        >>> [round(v, 4) for v in TernaryWeight()(w).tolist()]  # Delta = 0.7 * 0.41, alpha = (0.9 + 0.7 + 0.3) / 3
        [0.6333, 0.0, 0.0, -0.6333, 0.6333]
    """

    storage_bits = 2

    def __init__(self, factor: float = 0.7):
        super().__init__()
        self.factor = factor

    def levels(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(codes, alpha) of `w` (no gradient)."""
        w = w.detach()
        delta = twn_threshold(w, self.factor)
        return ternary_codes(w, delta), twn_alpha(w, delta)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        codes, alpha = self.levels(w)
        return straight_through(w, alpha * codes)

    def encode(self, w: torch.Tensor) -> Encoded:
        codes, alpha = self.levels(w)
        return Encoded(self.kind, {"codes": codes.to(torch.int8), "scale": alpha.reshape(()).float()},
                       {"shape": list(w.shape), "bits": 2, "int_ranges": {"codes": [-1, 1]}})

    @classmethod
    def decode(cls, encoded: Encoded) -> torch.Tensor:
        return encoded.tensors["scale"].float() * encoded.tensors["codes"].float()

    def extra_repr(self) -> str:
        return f"ternary, Delta = {self.factor} E|w|"


class _TTQFunction(torch.autograd.Function):
    """TTQ's forward (W^p / 0 / -W^n by the threshold) and the paper's backward (eq. 7, 8)."""

    @staticmethod
    def forward(ctx, w: torch.Tensor, wp: torch.Tensor, wn: torch.Tensor, delta: torch.Tensor,  # type: ignore[override]
                mean: bool):
        positive, negative = w > delta, w < -delta
        ctx.save_for_backward(positive, negative, wp, wn)
        ctx.mean = mean
        return ttq_values(positive, negative, wp, wn)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        positive, negative, wp, wn = ctx.saved_tensors
        scale = torch.where(positive, wp, torch.where(negative, wn, torch.ones_like(wp)))
        grad_wp = (grad * positive).sum().reshape(wp.shape)
        grad_wn = -(grad * negative).sum().reshape(wn.shape)
        if ctx.mean:
            grad_wp, grad_wn = grad_wp / positive.sum().clamp(min=1), grad_wn / negative.sum().clamp(min=1)
        return grad * scale, grad_wp, grad_wn, None, None


def ttq_values(positive: torch.Tensor, negative: torch.Tensor, wp: torch.Tensor, wn: torch.Tensor) -> torch.Tensor:
    """W^p on I_p, -W^n on I_n, 0 elsewhere."""
    zero = torch.zeros((), dtype=wp.dtype)
    return torch.where(positive, wp, torch.where(negative, -wn, zero))


@transform_kind("ttq")
class TrainedTernary(WeightTransform):
    """TTQ: w -> W^p (w > Delta), -W^n (w < -Delta), 0 otherwise, with Delta = t max|w| and the
    learned levels `wp`, `wn` (parameters of the parametrization, trained with the model)."""

    storage_bits = 2

    def __init__(self, wp: torch.Tensor, wn: torch.Tensor, threshold: float = 0.05, level_grad: str = "mean"):
        super().__init__()
        self.threshold, self.level_grad = threshold, check_choice("level_grad", level_grad, LEVEL_GRADS)
        self.wp = nn.Parameter(wp.detach().clone().float().reshape(()))
        self.wn = nn.Parameter(wn.detach().clone().float().reshape(()))

    @classmethod
    def fit(cls, w: torch.Tensor, threshold: float = 0.05, level_grad: str = "mean") -> TrainedTernary:
        """Levels initialised to the mean magnitude of the weights above / below the threshold."""
        w = w.detach()
        delta = threshold * w.abs().max()
        positive, negative = w > delta, w < -delta
        wp = w[positive].mean() if positive.any() else delta
        wn = (-w[negative]).mean() if negative.any() else delta
        return cls(wp, wn, threshold, level_grad)

    def delta(self, w: torch.Tensor) -> torch.Tensor:
        return self.threshold * w.detach().abs().max()

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return _TTQFunction.apply(w, self.wp, self.wn, self.delta(w), self.level_grad == "mean")

    def encode(self, w: torch.Tensor) -> Encoded:
        codes = ternary_codes(w.detach(), self.delta(w)).to(torch.int8)
        return Encoded(self.kind, {"codes": codes, "wp": self.wp.detach().clone(), "wn": self.wn.detach().clone()},
                       {"shape": list(w.shape), "bits": 2, "int_ranges": {"codes": [-1, 1]}})

    @classmethod
    def decode(cls, encoded: Encoded) -> torch.Tensor:
        codes = encoded.tensors["codes"]
        return ttq_values(codes > 0, codes < 0, encoded.tensors["wp"].float(), encoded.tensors["wn"].float())

    def extra_repr(self) -> str:
        return f"W^p={float(self.wp.detach()):.4g}, W^n={float(self.wn.detach()):.4g}, t={self.threshold}"


@register("twn")
@dataclass(frozen=True, kw_only=True)
class TWN(Method):
    """Ternary Weight Networks: {-alpha, 0, +alpha} per layer, Delta = factor * E|w| (0.7).

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Linear(16, 4))
        >>> _ = TWN().apply(net, Context())
        >>> len(torch.unique(net[0].weight))
        3
    """

    factor: float = 0.7
    keep_first_last: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.factor, (int, float)) or not 0 <= self.factor < 10:
            raise UserError(f"factor={self.factor!r} must be a number in [0, 10) (TWN uses 0.7)")

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        layers = apply_binary(self, model, lambda n, l: TernaryWeight(self.factor),
                              keep_first_last=self.keep_first_last, activations=None)
        ctx.record(self, layers=list(layers))
        return model


@register("ttq")
@dataclass(frozen=True, kw_only=True)
class TTQ(Method):
    """Trained Ternary Quantization: learned W^p, W^n per layer, threshold t * max|w| (t = 0.05).

    Example:
        >>> net = torch.nn.Sequential(torch.nn.Linear(16, 4))
        >>> _ = TTQ().apply(net, Context())
        >>> sorted(n for n, _ in net.named_parameters())
        ['0.bias', '0.parametrizations.weight.0.wn', '0.parametrizations.weight.0.wp', '0.parametrizations.weight.original']
    """

    threshold: float = 0.05
    level_grad: str = "mean"
    keep_first_last: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.threshold, (int, float)) or not 0 <= self.threshold < 1:
            raise UserError(f"threshold={self.threshold!r} must be in [0, 1) (a fraction of max|w|; TTQ uses 0.05)")
        check_choice("level_grad", self.level_grad, LEVEL_GRADS)

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        layers = apply_binary(self, model, lambda n, l: TrainedTernary.fit(l.weight, self.threshold, self.level_grad),
                              keep_first_last=self.keep_first_last, activations=None)
        ctx.record(self, layers=list(layers))
        return model
