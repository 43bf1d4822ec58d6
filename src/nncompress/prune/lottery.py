"""Lottery tickets (Frankle & Carbin, ICLR 2019; pruning lecture, "Lottery ticket hypothesis").

Iterative magnitude pruning with rewinding: train, prune the smallest surviving weights, reset the
survivors to their values at initialization (or at step k, "late rewinding", Frankle et al. 2020),
and repeat. The control keeps the same masks but draws a fresh random initialization.
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from ..config import Context, Method, run_method
from ..parametrize import find_transform, plain_state
from .mask import Mask, attach_mask, keep_mask_of
from .masks import iterative_sparsities
from .schedules import at_sparsity


@dataclass
class TicketRound:
    """One round: the mask it trained under, that mask's sparsity, and the trained accuracy."""

    sparsity: float
    accuracy: float
    masks: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class TicketResult:
    ticket: nn.Module
    rounds: list[TicketRound] = field(default_factory=list)


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the model's tensors under their plain names (masks left out)."""
    return {k: v.detach().clone() for k, v in plain_state(model).items()}


def rewind_(model: nn.Module, saved: dict[str, torch.Tensor]) -> nn.Module:
    """Reset every tensor to `saved` but keep the current masks (pruned entries stay zero)."""
    with torch.no_grad():
        for key, tensor in plain_state(model).items():
            tensor.copy_(saved[key])
    for module in model.modules():
        if find_transform(module, Mask) is not None:
            attach_mask(module, keep_mask_of(module).clone())
    return model


def find_ticket(model: nn.Module, method: Method, rounds: int,
                train: Callable[[nn.Module, Callable[[int], None] | None], None],
                evaluate: Callable[[nn.Module], float], rewind_step: int = 0, data: Iterable | None = None) -> TicketResult:
    """Run `rounds` of train -> prune -> rewind towards `method`'s final sparsity.

    `train(model, on_step)` trains in place, calling `on_step(step)` after each step (used to
    capture the weights at `rewind_step` for late rewinding). The returned ticket is rewound and
    trained once more; each round's sparsity and trained accuracy are recorded. `data` reaches
    data-aware pruning criteria through their Context.
    """
    saved = snapshot(model) if rewind_step == 0 else {}

    def capture(step: int) -> None:
        if step == rewind_step and not saved:
            saved.update(snapshot(model))

    result = TicketResult(model)
    ctx = Context(data=data)
    for k in range(rounds):
        train(model, capture if rewind_step and not saved else None)
        result.rounds.append(TicketRound(_sparsity(model), evaluate(model), current_masks(model)))
        run_method(model, at_sparsity(method, lambda s, k=k: iterative_sparsities(s, rounds)[k]), ctx)
        rewind_(model, saved)
    train(model, None)
    result.rounds.append(TicketRound(_sparsity(model), evaluate(model), current_masks(model)))
    return result


def current_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of the keep masks of every masked layer, by name."""
    return {n: keep_mask_of(m).clone() for n, m in model.named_modules() if find_transform(m, Mask) is not None}


def apply_masks_(model: nn.Module, masks: dict[str, torch.Tensor]) -> nn.Module:
    """Attach the given keep masks (e.g. a ticket's) to `model`'s layers."""
    for name, mask in masks.items():
        attach_mask(model.get_submodule(name), mask)
    return model


def random_reinit_control(ticket: nn.Module, fresh: nn.Module) -> nn.Module:
    """The ticket's masks on `fresh`'s (new random) weights: the control of Frankle & Carbin."""
    return rewind_(copy.deepcopy(ticket), snapshot(fresh))


def masked_copy(fresh: nn.Module, masks: dict[str, torch.Tensor]) -> nn.Module:
    """`fresh` (a newly initialized model) under the given masks: the control for one round."""
    return apply_masks_(copy.deepcopy(fresh), masks)


def _sparsity(model: nn.Module) -> float:
    masks = [keep_mask_of(m) for m in model.modules() if find_transform(m, Mask) is not None]
    if not masks:
        return 0.0
    return 1 - sum(int(m.sum()) for m in masks) / sum(m.numel() for m in masks)
