"""Group-wise brain damage (Lebedev & Lempitsky, "Fast ConvNets Using Group-wise Brain Damage", CVPR 2016;
the "AlexNet experiments" slide of Yoo's pruning lecture).

Training adds the truncated group-lasso penalty

    Omega(K) = lambda * sum_{i,j,s} min(||Gamma_ijs||_2, theta)

to the loss, where Gamma_ijs = K[:, s, i, j] is one column of the lowered convolution matrix (all output
channels at input channel s, kernel position (i, j)). The penalty drives whole groups to zero; the
truncation at theta stops pulling on groups that are clearly needed. Then the groups with the
smallest norms are removed (a fraction `sparsity`, the slide's 1 - tau) and the network is fine-tuned
with the sparsity pattern fixed.

Usage: `fit(model, data, config, regularizers=method.regularizers(model))`, then
`apply_(model, method)`, then fine-tune.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from ..config import Context
from ..registry import register
from ..validate import UserError, check_choice, check_positive
from .structured import _layer_units
from .structures import structure_dims
from .unstructured import SparsityPrune

GROUPS = ("column", "input_channel")


def group_norms(weight: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """||Gamma||_2 of every group (differentiable; the groups are indexed by `dims`)."""
    reduce = tuple(d for d in range(weight.dim()) if d not in dims)
    return weight.square().sum(reduce).clamp_min(1e-30).sqrt() if reduce else weight.abs()


def group_lasso_penalty(weights: list[torch.Tensor], group: str, lam: float, theta: float = math.inf) -> torch.Tensor:
    """lambda * sum over all groups of min(||Gamma||_2, theta) over the given weight tensors."""
    total = torch.zeros(())
    for w in weights:
        norms = group_norms(w, structure_dims(group, w.dim()))
        total = total + torch.clamp(norms, max=theta).sum()
    return lam * total


@register("group_lasso")
@dataclass(frozen=True, kw_only=True)
class GroupLassoPrune(SparsityPrune):
    """Group-wise brain damage: `regularizers` gives the truncated group-lasso penalty for training;
    `apply` removes the `sparsity` fraction of groups with the smallest L2 norms.

    Args:
        group: "column" (Gamma_ijs = W[:, s, i, j], the paper's groups) or "input_channel" (W[:, s]).
        lam: lambda, the penalty weight (> 0).
        theta: the truncation theta (> 0; default: no truncation, plain group lasso).
    """

    group: str = "column"
    lam: float = 1e-4
    theta: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("group", self.group, GROUPS)
        check_positive("lam", self.lam)
        if self.theta is not None:
            check_positive("theta", self.theta)

    def regularizers(self, model: nn.Module) -> list[Callable[[nn.Module], torch.Tensor]]:
        """[model -> lambda * sum min(||Gamma||, theta)] over the targeted layers."""
        names = list(self.targets.layers(model))
        if not names:
            raise UserError(f"GroupLassoPrune: no layer matches {self.targets}")
        theta = math.inf if self.theta is None else self.theta

        def group_lasso(net: nn.Module) -> torch.Tensor:
            modules = dict(net.named_modules())
            return group_lasso_penalty([modules[n].weight for n in names], self.group, self.lam, theta)
        return [group_lasso]

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        def l2(w: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
            return group_norms(w.detach().float(), dims)
        return _layer_units(self, model, ctx, self.group, l2)
