"""BatchNorm population statistics re-estimated for the network that is evaluated (Ioffe & Szegedy
2015, sec. 3.1): after training with a stochastic weight sample (stochastic BinaryConnect, quant/binary.py)
the running statistics describe sampled networks, not the deterministic one stored and run."""
from __future__ import annotations

import copy
from collections.abc import Iterable
from contextlib import contextmanager

import torch
from torch import nn

from ..batches import feed
from ..validate import UserError


def batchnorms(model: nn.Module) -> dict[str, nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers of `model` that keep running statistics, by name."""
    return {n: m for n, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats}


@contextmanager
def _population_pass(model: nn.Module, norms: list[nn.modules.batchnorm._BatchNorm]):
    """Every module in eval mode but `norms`, which train with momentum=None (their running
    statistics become the plain average of the batch statistics); modes and momenta restored after."""
    modes = {m: m.training for m in model.modules()}
    momenta = {m: m.momentum for m in norms}
    model.eval()
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None
        norm.train()
    try:
        yield
    finally:
        for module, training in modes.items():
            module.training = training
        for norm, momentum in momenta.items():
            norm.momentum = momentum


@torch.no_grad()
def reestimate_batchnorm_(model: nn.Module, batches: Iterable) -> list[str]:
    """Recompute every BatchNorm's running mean / variance for the network evaluated at test time;
    returns the BatchNorms' names.

    Stochastic BinaryConnect trains with a fresh sample w_b ~ hard_sigmoid(w / H) per step, so the
    running statistics average the activations of sampled networks, but the stored, evaluated
    network is the deterministic sign(w) one (E[w_b] = w != H sign(w)): its activations have another
    mean and variance, and the mismatch compounds over BatchNorm layers (ResNet-20 on mnist-10k,
    seed 0, float 4 epochs + 2 stochastic epochs, 1,000-image validation split: 38.6 % with the
    training statistics, 98.4 % once re-estimated on 5,120 training images). As in Ioffe & Szegedy
    2015 (sec. 3.1: inference normalises with the population statistics of the network being run),
    the rest of the model runs in eval mode (sign weights, no dropout) and each BatchNorm's running
    statistics become the average of its batch statistics over `batches`. (The paper evaluates
    stochastic BinaryConnect with the real-valued w instead; that network is not 1-bit.)

        >>> from nncompress.config import Context
        >>> from nncompress.quant.binary import BinaryConnect
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
        >>> _ = BinaryConnect(stochastic=True, scaling="none").apply(net, Context())
        >>> reestimate_batchnorm_(net, [torch.randn(8, 4)])
        ['1']
    """
    norms = batchnorms(model)
    if not norms:  # nothing to re-estimate (LeNet-5): no pass over the data
        return []
    before = copy.deepcopy({n: m.state_dict() for n, m in norms.items()})
    seen = 0
    with _population_pass(model, list(norms.values())):
        for batch in batches:
            feed(model, batch)
            seen += 1
    if not seen:
        for name, state in before.items():
            norms[name].load_state_dict(state)
        raise UserError(f"reestimate_batchnorm_ got no batches: the statistics of {len(norms)} BatchNorm layer(s) "
                        f"({', '.join(list(norms)[:3])}{', ...' if len(norms) > 3 else ''}) are left unchanged")
    return list(norms)


__all__ = ["batchnorms", "reestimate_batchnorm_"]
