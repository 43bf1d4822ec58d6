"""The `Mask` parametrization: the model computes with `w * mask` (seed 000, fine-grained pruning).

Because the forward pass multiplies by the mask, pruned weights get zero gradient, and because
`attach_mask` also zeroes the stored original, weight decay and momentum leave them exactly zero.
"""
from __future__ import annotations

import torch
from torch import nn

from ..parametrize import WeightTransform, attach, find_transform, original


class Mask(WeightTransform):
    """w -> w * mask, with the keep mask as a bool buffer named `mask`."""

    def __init__(self, keep_mask: torch.Tensor):
        super().__init__()
        self.register_buffer("mask", keep_mask.detach().clone().bool())

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * self.mask

    def encode(self, w: torch.Tensor) -> dict[str, torch.Tensor]:
        """Flat indices of the kept weights and their values (a sparse COO form)."""
        masked = self.forward(w).detach()
        return {"indices": self.mask.flatten().nonzero().flatten(), "values": masked.flatten()[self.mask.flatten()]}

    def decode(self, encoded: dict[str, torch.Tensor]) -> torch.Tensor:
        dense = torch.zeros(self.mask.numel(), dtype=encoded["values"].dtype)
        dense[encoded["indices"]] = encoded["values"]
        return dense.view(self.mask.shape)


def attach_mask(layer: nn.Module, keep_mask: torch.Tensor) -> Mask:
    """Set `layer.weight`'s keep mask, reusing an existing Mask (so re-pruning never stacks masks)."""
    weight = original(layer)
    if keep_mask.shape != weight.shape:
        raise ValueError(f"mask shape {tuple(keep_mask.shape)} does not match weight shape {tuple(weight.shape)}")
    existing = find_transform(layer, Mask)
    with torch.no_grad():
        weight.mul_(keep_mask.to(weight.dtype))
    if existing is not None:
        existing.mask.copy_(keep_mask)
        return existing
    return attach(layer, Mask(keep_mask))  # type: ignore[return-value]


def keep_mask_of(layer: nn.Module) -> torch.Tensor:
    """The layer's current keep mask (all True when it has none)."""
    mask = find_transform(layer, Mask)
    return mask.mask if mask is not None else torch.ones_like(original(layer), dtype=torch.bool)
