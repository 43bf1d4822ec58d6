"""Soft weight-sharing (Ullrich, Meeds & Welling, "Soft Weight-Sharing for Neural Network Compression",
ICLR 2017): a Gaussian-mixture prior on the weights, learned together with them, that both clusters
(quantizes) and prunes.

Each targeted layer gets a mixture of J Gaussians over its weights,

    p(w) = prod_i sum_j pi_j N(w_i | mu_j, 1 / lambda_j),

with component 0 fixed at mu_0 = 0 and a large fixed mixing proportion pi_0 (`zero_mixing`, the paper's
0.999 for the whole network) that pulls most weights to zero (pruning), and J - 1 components with
learned means mu_j, precisions lambda_j (log-parametrized) and mixing proportions
pi_j = (1 - pi_0) softmax(a)_j. Gamma hyperpriors Gamma(lambda | alpha, beta) keep the precisions from
collapsing (the paper: (alpha, beta) = (5000, 2) for the zero component, (250, 0.1) for the others).
Training minimises (paper eq. 8, per training example)

    L = L_E + tau / N * ( -log p(w) - log p(lambda) ),

the task loss plus the complexity term (`SoftWeightSharing.regularizers`, fed to `fit`), with the
gradient dL_C / dw_i = sum_j r_ij lambda_j (w_i - mu_j), r_ij the responsibilities: each weight is
pulled to the components that explain it. Afterwards `snap_to_mixture_` assigns every weight to its
most responsible component and sets it to that component's mean (sec. 4): weights of the zero
component are pruned (a `Mask`) and the others share the means as a codebook (`SharedWeights`,
k-means' parametrization), so the `.nnc` container stores the result exactly as it stores Deep
Compression's [mask, codebook] chains.

Train with Adam, as the paper does, and at the paper's separate learning rates: the precisions must
follow the weights as the prior squeezes them, or the zero component stays wide, the weights stay a
continuum inside it, and the snap prunes nearly all of them (measured: a LeNet-300-100 at chance).
`MixturePrior.lr_scales` declares the prior's factors; `train.make_optimizer` applies them. The paper
uses one prior for the whole network (`shared=True`, the default); `shared=False` gives each layer its own.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ..config import Context, Method
from ..parametrize import WeightTransform, attach, detach, find_transform, original, transform_kind
from ..prune.mask import attach_mask, keep_mask_of
from ..prune.masks import check_weight
from ..registry import register
from ..validate import UserError, check_choice, check_fraction, check_int_range, check_positive
from .kmeans import SharedWeights
from .ptq import quantizable_layers

ASSIGNMENTS = ("posterior", "likelihood")  # snap_to_mixture_'s rules


def mixture_log_prob(w: torch.Tensor, means: torch.Tensor, log_precisions: torch.Tensor,
                     log_mixing: torch.Tensor) -> torch.Tensor:
    """log sum_j pi_j N(w_i | mu_j, 1 / lambda_j) for every entry of `w` (shape of `w` + nothing):
    means, log precisions and log mixing proportions list all J components."""
    x = w.reshape(-1, 1)
    precision = log_precisions.exp()
    log_normal = 0.5 * (log_precisions - math.log(2 * math.pi)) - 0.5 * precision * (x - means) ** 2
    return torch.logsumexp(log_mixing + log_normal, dim=1).reshape(w.shape)


class _MixtureNegLogProb(torch.autograd.Function):
    """-sum_i log sum_j pi_j N(w_i | mu_j, 1 / lambda_j) and its gradients from two (components x weights)
    tables, the differences d_ji = w_i - mu_j and the responsibilities r_ij (kept unnormalised, e_ji,
    divided by their column total t_i only inside the reductions): paper eq. 8's L_C, by hand,

        dL/dw_i        = sum_j r_ij lambda_j d_ji
        dL/dmu_j       = -lambda_j M1_j
        dL/dlog lam_j  = (lambda_j M2_j - R_j) / 2
        dL/dlog pi_j   = -R_j,    R_j = sum_i r_ij, M1_j = sum_i r_ij d_ji, M2_j = sum_i r_ij d_ji^2.

    The moments are centred on each component's mean (M2_j = sum_i (r d)_ji w_i - mu_j M1_j): raw
    moments (sum r w^2 - 2 mu sum r w + mu^2 R) cancel in float32 once the precisions are large and
    the weights sit on their means, where training takes them (float32 vs float64 at lambda = 1e4:
    5e-5 of the largest gradient here, about 1e-2 from raw moments). Exponents below -80 (terms under
    1e-34 of the column's largest, far below float32's resolution) are clamped: exp is several times
    slower on arguments that underflow. Autograd through `mixture_log_prob` keeps a dozen such tables
    for its backward pass; measured on LeNet-5 (431k weights, 17 components, one thread), the term's
    value and gradients took 143 ms per step through it and 25-30 ms here (a plain step: 22 ms)."""

    @staticmethod
    def forward(ctx, w, means, log_precisions, log_mixing):  # noqa: D102 (documented on the class)
        dtype = torch.promote_types(w.dtype, means.dtype)
        x = w.detach().reshape(-1).to(dtype)
        dtypes = (means.dtype, log_precisions.dtype, log_mixing.dtype)
        log_precisions, log_mixing = log_precisions.detach().to(dtype), log_mixing.detach().to(dtype)
        precision, mu = log_precisions.exp(), means.detach().to(dtype)
        d = x[None, :] - mu[:, None]  # (J, numel): reductions over the components run along memory
        e = torch.mul(d, d).mul_((-0.5 * precision)[:, None])
        e.add_((log_mixing + 0.5 * (log_precisions - math.log(2 * math.pi)))[:, None])
        peak = e.amax(0)
        e.sub_(peak).clamp_(min=-80.0).exp_()
        total = e.sum(0)
        value = -(peak + total.log()).sum()
        if any(ctx.needs_input_grad):
            inverse = total.reciprocal_()
            r_sum = e @ inverse
            weighted = d.mul_(e)  # e_ji d_ji
            m1 = weighted @ inverse
            m2 = weighted @ (x * inverse) - mu * m1
            ctx.save_for_backward((precision @ weighted * inverse).reshape(w.shape).to(w.dtype),
                                  *((-precision * m1), 0.5 * (precision * m2 - r_sum), -r_sum))
            ctx.dtypes = dtypes
        return value.to(w.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):  # noqa: D102
        grad_w, *prior = ctx.saved_tensors
        return (grad * grad_w, *((grad * g).to(t) for g, t in zip(prior, ctx.dtypes)))


def mixture_neg_log_prob(w: torch.Tensor, means: torch.Tensor, log_precisions: torch.Tensor,
                         log_mixing: torch.Tensor) -> torch.Tensor:
    """-sum_i log sum_j pi_j N(w_i | mu_j, 1 / lambda_j), a scalar: the same value as
    `-mixture_log_prob(...).sum()` with the gradients formed in one pass (`_MixtureNegLogProb`)."""
    return _MixtureNegLogProb.apply(w, means, log_precisions, log_mixing)


def gamma_neg_log_prior(log_precisions: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """-log Gamma(lambda | alpha, beta) summed over components, up to a constant:
    -(alpha - 1) log lambda + beta lambda."""
    return (-(alpha - 1) * log_precisions + beta * log_precisions.exp()).sum()


@transform_kind("mixture_prior")
class MixturePrior(WeightTransform):
    """Holds a layer's mixture prior; the weight passes through unchanged (the soft phase: the layer
    computes with its float weights, the prior only adds a loss term), so it encodes as the weights."""

    #: learning-rate factors of the prior's parameters relative to the weights' (`train.lr_groups`); the
    #: paper's Adam rates are 1e-4 / 3e-3 / 3e-3 for 5e-4 on the weights (0.2 / 6 / 6); these were
    #: chosen in one-seed LeNet-300-100 pilots and are what benchmarks/soft_sharing.py measured
    #: (precisions must follow the weights as they shrink, or the snap prunes a continuum)
    lr_scales = {"means": 0.3, "log_precisions": 10.0, "mixing_logits": 10.0}
    no_weight_decay = ("means", "log_precisions", "mixing_logits")  # the prior is no weight to shrink

    def __init__(self, weight: torch.Tensor, components: int, zero_mixing: float, init_std: float,
                 share_with: MixturePrior | None = None):
        super().__init__()
        self.zero_mixing = zero_mixing
        if share_with is not None:  # one prior for several layers: the same Parameters (the paper: one per network)
            self.means, self.log_precisions = share_with.means, share_with.log_precisions
            self.mixing_logits = share_with.mixing_logits
            return
        w = weight.detach()
        spread = float(w.abs().max()) if w.numel() else 1.0
        means = torch.linspace(-spread, spread, components - 1) if components > 2 else torch.tensor([spread])
        self.means = nn.Parameter(means.float())  # the J - 1 learned means; mu_0 = 0 is fixed
        self.log_precisions = nn.Parameter(torch.full((components,), -2 * math.log(init_std)))
        self.mixing_logits = nn.Parameter(torch.zeros(components - 1))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w

    def all_means(self) -> torch.Tensor:
        return torch.cat([self.means.new_zeros(1), self.means])

    def log_mixing(self) -> torch.Tensor:
        rest = torch.log_softmax(self.mixing_logits, 0) + math.log1p(-self.zero_mixing)
        return torch.cat([rest.new_full((1,), math.log(self.zero_mixing)), rest])

    def neg_log_prob(self, w: torch.Tensor) -> torch.Tensor:
        """-log p(w), summed over the weights."""
        return mixture_neg_log_prob(w, self.all_means(), self.log_precisions, self.log_mixing())

    def responsibilities(self, w: torch.Tensor, *, mixing: bool = True) -> torch.Tensor:
        """r_ij = pi_j N(w_i | mu_j) / sum_k pi_k N(w_i | mu_k), shape (numel, J); with `mixing=False`
        the likelihoods alone, N(w_i | mu_j) / sum_k N(w_i | mu_k)."""
        x = w.detach().reshape(-1, 1)
        lp = self.log_precisions.detach()
        log_normal = 0.5 * lp - 0.5 * lp.exp() * (x - self.all_means().detach()) ** 2
        return torch.softmax(log_normal + (self.log_mixing().detach() if mixing else 0.0), dim=1)

    def extra_repr(self) -> str:
        return f"components={self.log_precisions.numel()}, zero_mixing={self.zero_mixing}"


def complexity(model: nn.Module, zero_gamma: tuple[float, float], gamma: tuple[float, float]) -> torch.Tensor:
    """sum over layers with a MixturePrior of -log p(w), plus -log p(lambda) once per distinct prior
    (a prior shared by several layers counts its hyperprior once): paper eq. 8's L_C."""
    total, counted = None, set()
    for layer in model.modules():
        prior = find_transform(layer, MixturePrior) if hasattr(layer, "parametrizations") else None
        if prior is None:
            continue
        term = prior.neg_log_prob(layer.weight)
        lp = prior.log_precisions
        if id(lp) not in counted:
            counted.add(id(lp))
            alpha = torch.tensor([zero_gamma[0]] + [gamma[0]] * (lp.numel() - 1), dtype=lp.dtype, device=lp.device)
            beta = torch.tensor([zero_gamma[1]] + [gamma[1]] * (lp.numel() - 1), dtype=lp.dtype, device=lp.device)
            term = term + gamma_neg_log_prior(lp, alpha, beta)
        total = term if total is None else total + term
    if total is None:
        raise UserError("soft weight-sharing: the model has no layer with a mixture prior (apply SoftWeightSharing first)")
    return total


@register("soft_sharing")
@dataclass(frozen=True, kw_only=True)
class SoftWeightSharing(Method):
    """Ullrich et al. 2017: a learned Gaussian-mixture prior (one for the network, or one per layer);
    train with `regularizers`, then `finish(model)` (or `snap_to_mixture_`) prunes + shares weights.

    Args:
        components: J, the zero component included (the paper: 17 = 16 + zero).
        zero_mixing: the fixed mixing proportion pi_0 of the zero component (the paper: 0.999).
        tau: weight of the complexity term per training set (the paper: 5e-3).
        dataset_size: N, the training examples the task loss (a mean) stands for: tau / N weighs
            the prior. Required to train (no default: the paper's 60,000 would silently weaken the
            prior 8x on 7,500 images); a recipe fills it from its training set.
        init_std: initial standard deviation of every component (the paper's code: 0.25, with
            means spread over [-0.6, 0.6]; 0.05 here, with means spread over [-max |w|, max |w|]).
        zero_gamma, gamma: Gamma (alpha, beta) hyperpriors on the precisions of the zero
            component and of the others (the paper: (5000, 2) and (250, 0.1)).
        shared: one prior for all targeted layers (the paper's), its means spread over the
            largest weight of any layer; False: one prior per layer, whose zero component then
            follows that layer's own spread (a one-seed LeNet-300-100 pilot, 60 epochs: fc2
            stayed a continuum and the snapped model lost 6 points to the soft one; shared: under 1).
        assign: the snap's rule in `finish` (see `snap_to_mixture_`): likelihood (default) or
            posterior (the paper's). Once the weights have clustered the two agree (one-seed pilots:
            LeNet-300-100 after 60 epochs, 96.15 % either way); before that, posterior's fixed
            pi_0 = 0.999 prunes weights the task still needs (digits after 30 epochs: 36 % against
            97 % with likelihood).
        snapped: the finished form, as `finish` records it for `save_model`: `apply` attaches an
            all-keep mask and an empty codebook per layer, for the saved state to fill.
    Example:
        >>> import nncompress as nc, torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(8, 4))
        >>> method = nc.SoftWeightSharing(components=5, dataset_size=1000)
        >>> _ = nc.apply_(net, method)
        >>> float(method.regularizers(net)[0](net)) != 0.0
        True
    """

    components: int = 17
    zero_mixing: float = 0.999
    tau: float = 5e-3
    dataset_size: int | None = None
    init_std: float = 0.05
    zero_gamma: tuple[float, ...] = (5000.0, 2.0)
    gamma: tuple[float, ...] = (250.0, 0.1)
    shared: bool = True
    assign: str = "likelihood"
    snapped: bool = False

    trains_before_finish: ClassVar[bool] = True

    def __post_init__(self) -> None:
        check_int_range("components", self.components, 2, 256)
        check_fraction("zero_mixing", self.zero_mixing)
        if not 0.0 < self.zero_mixing < 1.0:
            raise UserError(f"zero_mixing={self.zero_mixing} must be in (0, 1)")
        check_positive("tau", self.tau)
        if self.dataset_size is not None:
            check_int_range("dataset_size", self.dataset_size, 1, 1 << 40)
        check_positive("init_std", self.init_std)
        check_choice("assign", self.assign, ASSIGNMENTS)
        for name in ("shared", "snapped"):
            if not isinstance(getattr(self, name), bool):
                raise UserError(f"{name}={getattr(self, name)!r} must be true or false")
        for name in ("zero_gamma", "gamma"):
            value = tuple(getattr(self, name))
            if len(value) != 2 or not all(isinstance(v, (int, float)) and v > 0 for v in value):
                raise UserError(f"{name}={value} must be two positive numbers (alpha, beta)")
            object.__setattr__(self, name, tuple(float(v) for v in value))

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        layers = quantizable_layers(self, model, activations=False)
        for name, layer in layers.items():
            check_weight(layer.weight, name, "SoftWeightSharing")
        if self.snapped:
            self._attach_snapped(layers, ctx)
            return model
        first = None
        if self.shared and layers:  # means spread over the largest targeted weight
            largest = max(float(layer.weight.detach().abs().max()) for layer in layers.values())
            first = MixturePrior(torch.tensor([largest]), self.components, self.zero_mixing, self.init_std)
        for name, layer in layers.items():
            prior = MixturePrior(layer.weight, self.components, self.zero_mixing, self.init_std, share_with=first)
            attach(layer, prior, layer_name=name)
        ctx.record(self, components=self.components, layers=list(layers))
        return model

    def _attach_snapped(self, layers: dict[str, nn.Module], ctx: Context) -> None:
        for name, layer in layers.items():
            w = layer.weight.detach()
            attach_mask(layer, torch.ones_like(w, dtype=torch.bool), layer_name=name)
            attach(layer, SharedWeights(torch.zeros(self.components - 1), torch.zeros(w.shape, dtype=torch.long)),
                   layer_name=name)
        ctx.record(self, snapped=True, layers=list(layers))

    def finish(self, model: nn.Module) -> tuple[list[Method], dict]:
        """The snap (`snap_to_mixture_` with this method's `assign`); `replace(self, snapped=True)`
        rebuilds its [mask, codebook] structure on a fresh model for the saved state to fill."""
        if self.snapped:
            raise UserError("SoftWeightSharing(snapped=True) is the finished form already: nothing to finish")
        layers = snap_to_mixture_(model, assign=self.assign)
        if not layers:
            raise UserError("soft weight-sharing: no layer has a mixture prior to snap (apply SoftWeightSharing and "
                            "train first; finish runs once)")
        return [dataclasses.replace(self, snapped=True)], {"snapped": layers, "assign": self.assign}

    def regularizers(self, model: nn.Module) -> list[Callable[[nn.Module], torch.Tensor]]:
        """The complexity term tau / N * L_C while training; none once snapped (the codebook fine-tunes freely)."""
        if self.snapped:
            return []
        if self.dataset_size is None:
            raise UserError("SoftWeightSharing needs dataset_size=N, the number of training examples the task loss "
                            "averages over (the complexity term is tau / N * L_C); a recipe fills it from its "
                            "training set")
        scale = self.tau / self.dataset_size

        def soft_weight_sharing(net: nn.Module) -> torch.Tensor:
            return scale * complexity(net, self.zero_gamma, self.gamma)

        return [soft_weight_sharing]


@torch.no_grad()
def snap_to_mixture_(model: nn.Module, *, assign: str = "likelihood") -> dict[str, dict]:
    """Replace every MixturePrior by its hard assignment (Ullrich 2017 sec. 4): each weight takes the
    mean of its most responsible component; the zero component's weights are pruned (a Mask, ANDed
    with any mask already there) and the others share the used means as a codebook (SharedWeights).
    `assign`: "likelihood" (default: argmax_j N(w | mu_j, 1/lambda_j); the mixing proportions, whose
    fixed pi_0 = 0.999 drives training, do not decide, so a weight is pruned only where the zero
    component explains it best) or "posterior" (the paper: argmax_j pi_j N(w | mu_j, 1/lambda_j)).
    Returns per layer the kept fraction and the number of shared values."""
    check_choice("assign", assign, ASSIGNMENTS)
    report = {}
    for name, layer in model.named_modules():
        prior = find_transform(layer, MixturePrior) if hasattr(layer, "parametrizations") else None
        if prior is None:
            continue
        w = layer.weight.detach()
        component = prior.responsibilities(w, mixing=assign == "posterior").argmax(1).reshape(w.shape)
        keep = (component > 0) & keep_mask_of(layer)
        used = torch.unique(component[keep])
        codebook = prior.all_means().detach()[used] if used.numel() else torch.zeros(1)
        indices = torch.full(w.shape, -1, dtype=torch.long)
        indices[keep] = torch.searchsorted(used, component[keep])
        detach(layer, MixturePrior)
        attach_mask(layer, keep, layer_name=name)
        original(layer).copy_(torch.where(keep, w, torch.zeros_like(w)))
        attach(layer, SharedWeights(codebook, indices), layer_name=name)
        report[name] = {"kept": float(keep.float().mean()), "shared_values": int(used.numel())}
    return report
