"""Binarization primitives, pure tensor functions shared by the binary and ternary methods (`binary.py`,
`ternary.py`, `lqnet.py`) and the XNOR kernel (`runtime/xnor.py`).

- sign: w_b = +1 if w >= 0 else -1; stochastic: +1 with probability p = hard_sigmoid(w) =
  clip((w + 1) / 2, 0, 1) (BinaryConnect, Courbariaux et al., NIPS 2015).
- straight-through estimators: the gradient of sign passes unchanged, or cancelled where |x| > 1
  (g_r = g_q 1_{|r| <= 1}, BNN, Hubara et al., NIPS 2016); `straight_through` returns any value with
  an identity gradient.
- scales: alpha* = ||W_o||_1 / n per output filter (BWN / XNOR-Net, Rastegari et al., ECCV 2016) and
  BinaryConnect's Glorot constant H = sqrt(1.5 / (fan_in + fan_out)).
"""
from __future__ import annotations

import math

import torch


def sign_pm1(x: torch.Tensor) -> torch.Tensor:
    """+1 where x >= 0, else -1 (the lecture's deterministic binarization; sign(0) = +1)."""
    return torch.where(x >= 0, torch.ones_like(x), -torch.ones_like(x))


def hard_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """sigma(x) = clip((x + 1) / 2, 0, 1), BinaryConnect's probability of +1."""
    return torch.clamp((x + 1) / 2, 0, 1)


def stochastic_sign(w: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """+1 with probability hard_sigmoid(w), else -1 (BinaryConnect's stochastic binarization)."""
    u = torch.rand(w.shape, generator=generator, dtype=w.dtype)
    return torch.where(u < hard_sigmoid(w), torch.ones_like(w), -torch.ones_like(w))


class _SignSTE(torch.autograd.Function):
    """sign_pm1 forward; backward passes the gradient (where |x| <= 1 only, when `cancel`)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, cancel: bool) -> torch.Tensor:  # type: ignore[override]
        ctx.cancel = cancel
        if cancel:
            ctx.save_for_backward(x)
        return sign_pm1(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        if ctx.cancel:
            (x,) = ctx.saved_tensors
            grad = grad * (x.abs() <= 1).to(grad.dtype)
        return grad, None


def sign_ste(x: torch.Tensor, cancel: bool = True) -> torch.Tensor:
    """sign_pm1(x) with the straight-through estimator (Hubara 2016: g_x = g 1_{|x| <= 1} if cancel).

        >>> x = torch.tensor([-2.0, -0.5, 0.0, 0.5, 2.0], requires_grad=True)
        >>> sign_ste(x).sum().backward(); x.grad.tolist()
        [0.0, 1.0, 1.0, 1.0, 0.0]
    """
    return _SignSTE.apply(x, cancel)


class _StraightThrough(torch.autograd.Function):
    """Returns `value` exactly; the gradient goes to `x` unchanged (identity STE)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, value: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return value.clone()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return grad, None


def straight_through(x: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """`value` in the forward pass (bit-exact), identity gradient to `x`."""
    return _StraightThrough.apply(x, value)


def filter_dims(w: torch.Tensor) -> tuple[int, ...]:
    """All dims but the output-channel dim 0 (one scale per output filter / row)."""
    return tuple(range(1, w.dim()))


def l1_scale(w: torch.Tensor) -> torch.Tensor:
    """alpha* = ||W_o||_1 / n per output filter o (BWN / XNOR-Net), shaped to broadcast against w."""
    return w.abs().mean(filter_dims(w), keepdim=True) if w.dim() > 1 else w.abs().mean().reshape(1)


def glorot_h(w: torch.Tensor) -> float:
    """BinaryConnect's H = sqrt(1.5 / (fan_in + fan_out)) (Glorot's uniform bound; the authors' code)."""
    receptive = int(math.prod(w.shape[2:])) if w.dim() > 2 else 1
    fan_in = w.shape[1] * receptive if w.dim() > 1 else 1
    return math.sqrt(1.5 / (fan_in + w.shape[0] * receptive))
