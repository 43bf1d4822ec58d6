"""PACT: Parameterized Clipping Activation (Choi et al., arXiv:1805.06085, 2018; lecture "PACT:
Parameterized Clipping Activation Function" in seeds 000).

A learned clipping level alpha per layer replaces the ReLU's unbounded range:
    y = PACT(x) = 0.5 (|x| - |x - alpha| + alpha) = clip(x, 0, alpha)
    y_q = round(y (2^k - 1) / alpha) alpha / (2^k - 1)
    d y_q / d alpha = d y_q / d y * d y / d alpha = 0 for x < alpha, 1 for x >= alpha  (STE: d y_q / d y = 1)
    d y_q / d x = 1 for 0 <= x < alpha, 0 elsewhere
and the loss gets the L2 term lambda / 2 * sum alpha^2 (`PACT.regularizers`), which pulls alpha down
so that clipping trades against the quantization error.

`PACTQuantizer` is an `ActQuantizer` (a layer's `input_quantizer`); its grid is S = alpha / (2^k - 1),
Z = 0, codes 0..2^k - 1, and `static = True`, so after training the integer engine and ONNX export
read `scale` / `zero_point` as a uint grid. PACT clips at 0, so it is meant for inputs that follow a
ReLU: a layer whose calibration input has negative values (the network input) gets a min-max
calibrated `StaticQuantizer` instead. Weights use fixed min-max grids fine-tuned through the STE
(the paper's "weight quantization based on statistics", slide "PACT Results").
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..registry import register
from ..validate import UserError, check_positive
from .activation import ActQuantizer
from .primitives import IntSpec
from .qat import STEQuant


def pact_clip(x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """The lecture's PACT activation y = 0.5 (|x| - |x - alpha| + alpha), differentiable by autograd.

        >>> pact_clip(torch.tensor([-1.0, 0.5, 3.0]), torch.tensor(2.0)).tolist()
        [0.0, 0.5, 2.0]
    """
    return 0.5 * (x.abs() - (x - alpha).abs() + alpha)


class PACTFunction(torch.autograd.Function):
    """y_q = round(clip(x, 0, alpha) / S) S with S = alpha / n, computed as clamp(round(x / S), 0, n) S
    (the same codes, and exactly the grid's value); PACT's gradients for x and alpha."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, alpha: torch.Tensor, levels: int) -> torch.Tensor:  # type: ignore[override]
        scale = alpha / levels
        ctx.save_for_backward(x, alpha)
        return torch.clamp(torch.round(x / scale), 0, levels) * scale

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        x, alpha = ctx.saved_tensors
        above = x >= alpha
        grad_x = grad * ((x >= 0) & ~above)
        grad_alpha = (grad * above).sum().reshape(alpha.shape)
        return grad_x, grad_alpha, None


def pact_quantize(x: torch.Tensor, alpha: torch.Tensor, bits: int) -> torch.Tensor:
    """PACT's k-bit quantized activation y_q (see `PACTFunction`)."""
    return PACTFunction.apply(x, alpha, 2**bits - 1)


class PACTQuantizer(ActQuantizer):
    """A layer input clipped at a learned `alpha` (an `nn.Parameter`) and quantized to `bits` bits."""

    static = True

    def __init__(self, bits: int, alpha: float):
        super().__init__(IntSpec(bits=bits, signed=False, symmetric=True, restricted=False))
        if not alpha > 0:
            raise UserError(f"PACT alpha={alpha} must be > 0")
        self.levels = 2**bits - 1
        self.alpha = nn.Parameter(torch.tensor(float(alpha)))
        self.register_buffer("zero_point", torch.zeros(()))

    @property
    def scale(self) -> torch.Tensor:
        """The grid step S = alpha / (2^k - 1) (detached)."""
        return self.alpha.detach() / self.levels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return PACTFunction.apply(x, self.alpha, self.levels)

    def extra_repr(self) -> str:
        return f"bits={self.spec.bits}, alpha={float(self.alpha):.4g}"


@register("pact")
@dataclass(frozen=True, kw_only=True)
class PACT(STEQuant):
    """QAT with PACT activations (learned clipping level per layer, L2 on alpha) and STE weights.

    Args (besides weight_bits, act_bits, granularity, layer_bits; see `QATMethod`):
        alpha_init: initial clipping level; None starts each layer at its calibration maximum
            (the paper starts at 10, which suits unnormalized activations).
        alpha_decay: lambda of the L2 penalty lambda / 2 * sum alpha^2 added by `regularizers`.
    Example:
        >>> import nncompress as nc, torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
        >>> method = PACT(weight_bits=4, act_bits=2, alpha_init=1.0)
        >>> _ = nc.apply_(net, method, data=[torch.randn(16, 8)])
        >>> float(net[2].input_quantizer.alpha), round(float(method.regularizers(net)[0](net).detach()), 8)
        (1.0, 0.0005)
    """

    alpha_init: float | None = None
    alpha_decay: float = 1e-3

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.alpha_init is not None:
            check_positive("alpha_init", self.alpha_init)
        if self.alpha_decay < 0:
            raise UserError(f"alpha_decay={self.alpha_decay} must be >= 0")

    def act_quantizer(self, bits: int, stats: dict) -> ActQuantizer:
        if stats["min"] < 0:  # not after a ReLU: PACT would clip the negative half away
            return super().act_quantizer(bits, stats)
        alpha = self.alpha_init if self.alpha_init is not None else max(stats["max"], 1e-3)
        return PACTQuantizer(bits, alpha)

    def regularizers(self, model: nn.Module):
        decay = self.alpha_decay

        def alpha_l2(net: nn.Module) -> torch.Tensor:
            alphas = [m.alpha for m in net.modules() if isinstance(m, PACTQuantizer)]
            if not alphas:
                return torch.zeros(())
            return 0.5 * decay * torch.stack([a.reshape(()) ** 2 for a in alphas]).sum()

        return [alpha_l2] if decay > 0 else []
