"""When to prune: one-shot, iterative prune -> retrain cycles, and gradual pruning (AGP).

A schedule takes a sparsity-bearing Method (MagnitudePrune, RandomPrune, ...) as the final target
and re-applies it at intermediate targets; each re-application starts from the surviving weights,
so masks only grow. Retraining follows Han et al. 2015 (NeurIPS, "Learning both weights and connections"): a learning rate 1/10 of the original,
and dropout rescaled by D_r = D_o sqrt(C_r / C_o).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from torch import nn

from ..analysis.metrics import weight_layers
from ..config import Context, Method, run_method
from ..train import TrainConfig
from ..validate import UserError
from .mask import keep_mask_of
from .unstructured import SparsityPrune
from .masks import agp_sparsity, density, iterative_sparsities, sqrt_dropout_rate


def at_sparsity(method: Method, ramp: Callable[[float], float]) -> Method:
    """`method` with every sparsity target s replaced by ramp(s) (per-layer overrides too)."""
    if not isinstance(method, SparsityPrune):
        raise UserError(f"{type(method).__name__} has no sparsity target (it is not a SparsityPrune), "
                        "so it cannot be scheduled; use the one-shot schedule")
    return method.at_sparsity(ramp)


def prune_iteratively(model: nn.Module, method: Method, ctx: Context, rounds: int,
                      retrain: Callable[[nn.Module, int], object]) -> nn.Module:
    """Han 2015 iterative pruning: `rounds` x (prune to s_k, retrain), s_k = 1 - (1 - s)^(k / rounds).

    Each step goes through `run_method` with `ctx` (its data reaches data-aware criteria; its
    report collects every round)."""
    for k in range(1, rounds + 1):
        step = at_sparsity(method, lambda s, k=k: iterative_sparsities(s, rounds)[k - 1])
        run_method(model, step, ctx)
        retrain(model, k)
    return model


class GradualPruning:
    """AGP (Zhu & Gupta 2017) as an `on_step` callback for `train.fit`.

    Every `frequency` steps between `begin` and `end` the method is re-applied at the cubic-ramp
    target agp_sparsity(step); after `end` the final target holds.
    """

    def __init__(self, model: nn.Module, method: Method, ctx: Context, *, begin: int, end: int, frequency: int = 10):
        if frequency < 1:
            raise UserError(f"frequency={frequency} must be >= 1")
        self.model, self.method, self.ctx = model, method, ctx
        self.begin, self.end, self.frequency = begin, end, frequency
        self.applied: list[tuple[int, float]] = []

    def target(self, step: int) -> Method:
        return at_sparsity(self.method, lambda s: agp_sparsity(step, s, begin=self.begin, end=self.end))

    def __call__(self, step: int) -> None:
        due = step == self.begin or (self.begin < step <= self.end and (step - self.begin) % self.frequency == 0)
        if due or (step == self.end):
            method = self.target(step)
            run_method(self.model, method, self.ctx)
            self.applied.append((step, method.sparsity))  # type: ignore[attr-defined]


def retrain_config(config: TrainConfig, epochs: int, lr_factor: float = 0.1) -> TrainConfig:
    """Seed 003: retrain pruned networks at 1/10 of the original learning rate."""
    return replace(config, epochs=epochs, lr=config.lr * lr_factor)


def rescale_dropout_(model: nn.Module, dense_rates: dict[str, float] | None = None) -> dict[str, float]:
    """Set each Dropout's rate to D_o sqrt(C_r / C_o) of the weight layer it feeds (the next one).

    `dense_rates` are the original rates D_o (default: the current ones); returns the new rates.
    """
    modules = list(model.named_modules())
    layer_ids = {id(m) for m in weight_layers(model).values()}
    new_rates = {}
    for i, (name, module) in enumerate(modules):
        if not isinstance(module, nn.Dropout):
            continue
        fed = next((m for _, m in modules[i + 1:] if id(m) in layer_ids), None)
        if fed is None:
            continue
        base = (dense_rates or {}).get(name, module.p)
        module.p = sqrt_dropout_rate(base, density(keep_mask_of(fed)))
        new_rates[name] = module.p
    return new_rates
