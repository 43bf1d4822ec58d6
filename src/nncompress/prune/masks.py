"""Pure tensor -> keep-mask functions (L0). A keep mask is a bool tensor: True = the weight stays.

Ties are broken deterministically: among equal scores the weight with the lower flat index is
pruned first, so the requested number of weights is removed exactly.
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from ..validate import UserError


def check_weight(weight: torch.Tensor, layer: str, method: str) -> None:
    """A UserError naming the layer when its weight is empty or holds NaN / infinite values."""
    if weight.numel() == 0:
        raise UserError(f"{method}: layer {layer!r} has a zero-size weight {list(weight.shape)}; exclude it "
                        "(targets=Select(exclude=(...)))")
    bad = int((~torch.isfinite(weight.detach())).sum())
    if bad:
        raise UserError(f"{method}: layer {layer!r} has {bad} NaN or infinite weights; fix the model "
                        "(or exclude the layer) before compressing it")


def prune_count(numel: int, sparsity: float) -> int:
    """How many of `numel` weights a target `sparsity` removes (rounded to nearest)."""
    return int(round(sparsity * numel))


def lowest_k_mask(scores: torch.Tensor, n_prune: int) -> torch.Tensor:
    """Keep mask that removes exactly the `n_prune` lowest scores (stable order breaks ties)."""
    flat = scores.detach().flatten()
    if not 0 <= n_prune <= flat.numel():
        raise ValueError(f"n_prune={n_prune} must be in [0, {flat.numel()}]")
    keep = torch.ones(flat.numel(), dtype=torch.bool, device=flat.device)
    order = torch.argsort(flat.float(), stable=True)
    keep[order[:n_prune]] = False
    return keep.view_as(scores)


def layer_masks(scores: Mapping[str, torch.Tensor], sparsity: Mapping[str, float]) -> dict[str, torch.Tensor]:
    """Per-layer masks: each layer loses `sparsity[name]` of its own weights."""
    return {name: lowest_k_mask(s, prune_count(s.numel(), sparsity[name])) for name, s in scores.items()}


def global_masks(scores: Mapping[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
    """Masks that remove the lowest `sparsity` fraction of all scores pooled across layers."""
    names = list(scores)
    flat = torch.cat([scores[n].detach().flatten().float() for n in names])
    keep = lowest_k_mask(flat, prune_count(flat.numel(), sparsity))
    out, start = {}, 0
    for name in names:
        n = scores[name].numel()
        out[name] = keep[start : start + n].view_as(scores[name])
        start += n
    return out


def global_masks_with_overrides(scores: Mapping[str, torch.Tensor], sparsity: float,
                                layer_sparsity: Mapping[str, float]) -> dict[str, torch.Tensor]:
    """Global pruning with per-layer exceptions: each layer in `layer_sparsity` loses exactly its own
    fraction, and the other layers share one threshold removing `sparsity` of their pooled scores."""
    rest = {name: s for name, s in scores.items() if name not in layer_sparsity}
    fixed = {name: scores[name] for name in layer_sparsity}
    masks = {**layer_masks(fixed, layer_sparsity), **(global_masks(rest, sparsity) if rest else {})}
    return {name: masks[name] for name in scores}


def threshold_mask(weight: torch.Tensor, quality: float) -> torch.Tensor:
    """Han et al. 2015: keep |w| > quality x std(w) (the 'quality parameter' threshold)."""
    return weight.detach().abs() > quality * weight.detach().float().std()


def magnitude_scores(weight: torch.Tensor) -> torch.Tensor:
    """|w|, the magnitude criterion: importance = |W| ("Magnitude-based pruning" in Yoo's lecture
    "Compressing Neural Networks: Pruning and Quantization"; Han et al., NeurIPS 2015)."""
    return weight.detach().abs()


def random_scores(weight: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Uniform random scores: the control that any real criterion must beat."""
    return torch.rand(weight.shape, generator=generator)


def agp_sparsity(step: int, final: float, *, initial: float = 0.0, begin: int = 0, end: int) -> float:
    """Zhu & Gupta 2017 gradual pruning: s_t = s_f + (s_i - s_f)(1 - (t - t0)/(t_end - t0))^3."""
    if end <= begin:
        raise UserError(f"AGP end step {end} must be after begin step {begin}")
    progress = min(max((step - begin) / (end - begin), 0.0), 1.0)
    return final + (initial - final) * (1.0 - progress) ** 3


def iterative_sparsities(final: float, rounds: int) -> list[float]:
    """Targets for `rounds` prune-retrain cycles removing the same fraction of survivors each round:
    s_k = 1 - (1 - final)^(k / rounds) (Han 2015 iterative pruning; Frankle & Carbin's p% per round)."""
    if rounds < 1:
        raise UserError(f"rounds={rounds} must be >= 1")
    return [1 - (1 - final) ** (k / rounds) for k in range(1, rounds + 1)]


def density(mask: torch.Tensor) -> float:
    """Fraction of weights kept."""
    return float(mask.sum()) / max(mask.numel(), 1)


def sqrt_dropout_rate(rate: float, kept_fraction: float) -> float:
    """Han 2015 eq. 2: D_r = D_o * sqrt(C_r / C_o) for the retraining dropout rate."""
    return rate * math.sqrt(kept_fraction)


def nm_matrix(weight: torch.Tensor) -> torch.Tensor:
    """The weight as the matrix whose rows are split into groups of M (N:M sparsity, `prune/nm.py`):
    Linear [out, in] as is; a conv weight [K, C, *kernel] as [prod(kernel) * K, C]."""
    if weight.dim() <= 2:
        return weight.reshape(-1, weight.shape[-1]) if weight.dim() == 2 else weight.reshape(1, -1)
    order = (*range(2, weight.dim()), 0, 1)
    return weight.permute(order).reshape(-1, weight.shape[1])


def nm_unmatrix(matrix: torch.Tensor, shape: tuple[int, ...] | torch.Size) -> torch.Tensor:
    """Inverse of `nm_matrix` for a weight of `shape`."""
    shape = tuple(shape)
    if len(shape) <= 2:
        return matrix.reshape(shape)
    kernel = shape[2:]
    back = (len(kernel), len(kernel) + 1, *range(len(kernel)))
    return matrix.reshape(*kernel, shape[0], shape[1]).permute(back).contiguous()


def nm_keep_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep mask (shape of `scores`) keeping the N largest scores of every group of M along the
    input dimension. Ties: among equal scores the lower index is pruned first (as `prune.masks`)."""
    matrix = nm_matrix(scores.detach().float())
    rows, k = matrix.shape
    if k % m:
        raise ValueError(f"input dimension {k} is not a multiple of m={m}")
    groups = matrix.reshape(rows, k // m, m)
    order = torch.argsort(groups, dim=-1, stable=True)
    keep = torch.ones_like(groups, dtype=torch.bool)
    keep.scatter_(-1, order[..., : m - n], False)
    return nm_unmatrix(keep.reshape(rows, k), scores.shape)
