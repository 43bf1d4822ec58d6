"""Entropy-penalized reparameterization (Oktay, Balle, Singh & Shrivastava, "Scalable Model
Compression by Entropy Penalized Reparameterization", ICLR 2020): every targeted weight is decoded
from integer latents, a learned probability model of those latents gives their code length, and
training minimises the task loss plus lambda x that length; the latents are then range-coded
(`encode/rans.py`) with close to that many bits.

Per layer (paper sec. 2, with the scalar affine decoder the paper uses for dense layers; the shift
is left out so a latent 0 is an exact zero weight and masks compose):

    phi = w / step                      latents, in units of a fixed step (the tensor trained is w)
    w_hat = scale * round(phi)          decoder; `scale` is learned, round has the straight-through
                                        gradient for the task loss (paper sec. 3.2)
    R = sum_i -log2 p(phi_i + u_i)      rate in bits, u ~ U(-1/2, 1/2) in training (paper eq. 4;
                                        Balle et al. 2017's relaxation), round(phi) in evaluation
    p(y) = c(y + 1/2) - c(y - 1/2)      c: the learned non-parametric CDF of Balle, Minnen, Singh,
                                        Hwang & Johnston, "Variational image compression with a scale
                                        hyperprior", ICLR 2018, appendix 6.1 (`FactorizedDensity`:
                                        a monotone 1-3-3-3-1 network through a sigmoid)
    loss = task loss + rate_weight * sum over layers of R

`rate_weight` is the paper's lambda per bit of the whole model (the task loss is a batch mean).
The learned step-free decoder scale lets the latent grid coarsen as the penalty shrinks the
latents. Storage (`encode`): the int32 latents (marked `entropy_coded`, so the container tries
its rANS codec, whose table is the latents' quantized counts: the empirical distribution, which
codes the stored latents in at most the learned model's bits) and the float32 scale;
`decode` = scale * latents, bit for bit what the layer computes with.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import Context, Method
from ..parametrize import Encoded, WeightTransform, attach, original, transform_kind, transforms
from ..prune.masks import check_weight
from ..registry import register
from ..validate import UserError, check_int_range, check_positive
from .primitives import round_ste
from .ptq import quantizable_layers

MAX_LATENT = 1 << 20  # |round(w / step)| above this is refused (the container's rANS alphabet is 2^14)


class FactorizedDensity(nn.Module):
    """Balle et al. 2018 (appendix 6.1) univariate density: c(x) = sigmoid(f_K(...f_1(x))) with
    f_k(x) = softplus(H_k) x + b_k (+ tanh(a_k) * tanh(...) between layers), non-decreasing in x
    since softplus(H_k) > 0 and 1 + tanh(a) tanh'(.) >= 0. `filters=()` gives the logistic CDF
    sigmoid(softplus(H) x + b).

    Every parameter is stored divided by `LR_SCALE` and used multiplied by it, so an optimizer step
    (Adam's is about lr in each parameter) moves the density `LR_SCALE` times faster than the
    weights: it must narrow from the dense weights' spread to a spike at 0 within one fine-tuning
    run (with one learning rate for both it lagged far behind: measured on LeNet-300-100, a learned
    rate of 3.7 bits per weight where the latents' entropy was 0.33). The factor 10 holds for Adam
    (steps about lr whatever the gradient's size); under SGD the gradient is scaled too, so the
    density moves LR_SCALE^2 = 100 times faster: fine-tune this method with Adam."""

    LR_SCALE = 10.0

    def __init__(self, filters: tuple[int, ...] = (3, 3, 3), init_scale: float = 10.0):
        super().__init__()
        widths = (1, *filters, 1)
        scale = init_scale ** (1 / (len(widths) - 1))
        self.matrices, self.biases, self.factors = nn.ParameterList(), nn.ParameterList(), nn.ParameterList()
        for i in range(len(widths) - 1):
            init = math.log(math.expm1(1 / scale / widths[i + 1]))
            self.matrices.append(nn.Parameter(torch.full((widths[i + 1], widths[i]), init / self.LR_SCALE)))
            self.biases.append(nn.Parameter(torch.linspace(-0.5, 0.5, widths[i + 1]).reshape(-1, 1) / self.LR_SCALE))
            if i < len(widths) - 2:
                self.factors.append(nn.Parameter(torch.zeros(widths[i + 1], 1)))

    def cdf_logits(self, x: torch.Tensor) -> torch.Tensor:
        """logit c(x) for a flat x (shape (n,))."""
        h, k = x.reshape(1, -1), self.LR_SCALE
        for i, (matrix, bias) in enumerate(zip(self.matrices, self.biases)):
            h = F.softplus(k * matrix) @ h + k * bias
            if i < len(self.factors):
                h = h + torch.tanh(k * self.factors[i]) * torch.tanh(h)
        return h.reshape(-1)

    def likelihood(self, y: torch.Tensor) -> torch.Tensor:
        """p(y) = c(y + 1/2) - c(y - 1/2), computed on the side of the median where the two sigmoids
        are not both near 1 (Balle's sign trick, for precision in the tails)."""
        flat = y.reshape(-1)
        lower, upper = self.cdf_logits(flat - 0.5), self.cdf_logits(flat + 0.5)
        sign = torch.where(lower + upper > 0, -1.0, 1.0).detach()  # never 0 (sign(0) would zero p)
        return (torch.sigmoid(sign * upper) - torch.sigmoid(sign * lower)).abs().reshape(y.shape)


def latent_bits(density: FactorizedDensity, latents: torch.Tensor, floor: float = 1e-9) -> torch.Tensor:
    """sum_i -log2 p(latents_i), p floored at `floor` in the forward pass only: the floor's value
    with the unfloored gradient (a straight-through bound, as Balle's likelihood lower bound passes
    gradients that raise p), so a latent far in the tail still pulls the density toward itself and
    is pulled toward it (a plain clamp gave such latents zero gradient at a flat 29.9 bits)."""
    p = density.likelihood(latents)
    p = p + (p.clamp_min(floor) - p).detach()
    return -torch.log2(p).sum()


@transform_kind("entropy_penalized")
class EntropyReparam(WeightTransform):
    """w -> scale * round(w / step) (straight-through), with the layer's learned latent density."""

    def __init__(self, weight: torch.Tensor, init_bits: int, filters: tuple[int, ...]):
        super().__init__()
        top = float(weight.detach().abs().max()) if weight.numel() else 0.0
        step = (top if top > 0 else 1.0) / ((1 << (init_bits - 1)) - 1)
        self.register_buffer("step", torch.tensor(step, dtype=torch.float32))
        self.scale = nn.Parameter(torch.tensor(step, dtype=torch.float32))
        spread = 4 * float(weight.detach().std()) / step if weight.numel() > 1 else 1.0
        self.density = FactorizedDensity(filters, init_scale=max(spread, 1.0))  # about the latents' spread

    def latents(self, w: torch.Tensor) -> torch.Tensor:
        """phi = w / step, unrounded."""
        return w / self.step

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return self.scale * round_ste(self.latents(w))

    def rate_bits(self, w: torch.Tensor, noisy: bool) -> torch.Tensor:
        """R in bits: phi + U(-1/2, 1/2) noise (training), or round(phi) (the stored latents)."""
        phi = self.latents(w)
        y = phi + torch.rand_like(phi) - 0.5 if noisy else torch.round(phi)
        return latent_bits(self.density, y)

    def encode(self, w: torch.Tensor) -> Encoded:
        """int32 latents round(w / step) (range-coded by the container) and the float32 scale."""
        q = torch.round(self.latents(w.detach()))
        if q.numel() and float(q.abs().max()) > MAX_LATENT:
            raise UserError(f"EntropyReparam: a latent reaches {float(q.abs().max()):.0f}, beyond +-{MAX_LATENT}; "
                            "use a smaller init_bits")
        return Encoded(self.kind, {"latents": q.to(torch.int32), "scale": self.scale.detach().clone()},
                       {"shape": list(w.shape), "entropy_coded": ["latents"]})

    @classmethod
    def decode(cls, encoded: Encoded) -> torch.Tensor:
        return encoded.tensors["scale"].float() * encoded.tensors["latents"].to(torch.float32)

    def extra_repr(self) -> str:
        return f"step={float(self.step):.3g}, scale={float(self.scale.detach()):.3g}"


def _input_of(layer: nn.Module, target: WeightTransform) -> torch.Tensor:
    """What `target` receives in the layer's chain: the trained tensor through the transforms
    before it (a pruning mask), with gradients."""
    value = original(layer)
    for t in transforms(layer):
        if t is target:
            return value
        value = t(value)
    raise UserError("internal: the transform is not on this layer")


def model_rate_bits(model: nn.Module, noisy: bool = False) -> dict[str, torch.Tensor]:
    """Per layer with an EntropyReparam: its rate R in bits (rounded latents unless `noisy`)."""
    rates = {}
    for name, layer in model.named_modules():
        for t in transforms(layer):
            if isinstance(t, EntropyReparam):
                rates[name] = t.rate_bits(_input_of(layer, t), noisy)
    return rates


@register("entropy_penalized")
@dataclass(frozen=True, kw_only=True)
class EntropyPenalized(Method):
    """Oktay et al. 2020: integer latents with a learned probability model; train with
    `regularizers` (task loss + rate_weight x bits), store range-coded.

    Args:
        rate_weight: lambda, loss per bit of the whole model's latents (the paper's rate trade-off).
        init_bits: the initial latent grid: step = max|w| / (2^(init_bits - 1) - 1).
        filters: hidden widths of each layer's density network (Balle 2018: (3, 3, 3); () = logistic).
    Example:
        >>> import nncompress as nc, torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(8, 4))
        >>> method = nc.EntropyPenalized(rate_weight=1e-4, init_bits=4)
        >>> _ = nc.apply_(net, method)
        >>> len(torch.unique(net[0].weight)) <= 15
        True
    """

    rate_weight: float = 1e-5
    init_bits: int = 6
    filters: tuple[int, ...] = (3, 3, 3)

    def __post_init__(self) -> None:
        check_positive("rate_weight", self.rate_weight)
        check_int_range("init_bits", self.init_bits, 2, 16)
        object.__setattr__(self, "filters", tuple(self.filters))
        if len(self.filters) > 8 or not all(isinstance(f, int) and 1 <= f <= 64 for f in self.filters):
            raise UserError(f"filters={self.filters} must be at most 8 widths, each an integer in [1, 64]")

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        layers = quantizable_layers(self, model, activations=False)
        for name, layer in layers.items():
            check_weight(layer.weight, name, "EntropyPenalized")
        for name, layer in layers.items():
            attach(layer, EntropyReparam(layer.weight, self.init_bits, self.filters), layer_name=name)
        ctx.record(self, init_bits=self.init_bits, layers=list(layers))
        return model

    def regularizers(self, model: nn.Module) -> list[Callable[[nn.Module], torch.Tensor]]:
        def rate(net: nn.Module) -> torch.Tensor:
            rates = model_rate_bits(net, noisy=net.training)
            if not rates:
                raise UserError("EntropyPenalized: the model has no entropy-penalized layer (apply the method first)")
            return self.rate_weight * torch.stack(list(rates.values())).sum()

        return [rate]
