"""The `Mask` parametrization: the model computes with `w * mask` (fine-grained pruning in Yoo, "Compressing
Neural Networks: Pruning and Quantization", SNU 2023; Han et al., NeurIPS 2015: W_pruned = W . M with M_ij = 1
if |W_ij| is kept).

Because the forward pass multiplies by the mask, pruned weights get zero gradient, and because
`attach_mask` also zeroes the stored original, weight decay and momentum leave them exactly zero.
"""
from __future__ import annotations

import torch
from torch import nn

from ..parametrize import Encoded, WeightTransform, attach, check_attachable, find_transform, original, transform_kind


@transform_kind("mask")
class Mask(WeightTransform):
    """w -> w * mask, with the keep mask as a bool buffer named `mask`."""

    role = "mask"

    def __init__(self, keep_mask: torch.Tensor):
        super().__init__()
        self.register_buffer("mask", keep_mask.detach().clone().bool())

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w * self.mask

    def encode(self, w: torch.Tensor) -> Encoded:
        """The keep mask and the kept values in C order (a bitmap sparse form)."""
        masked = self.forward(w).detach()
        return Encoded(self.kind, {"keep": self.mask.clone(), "values": masked[self.mask]},
                       {"shape": list(self.mask.shape), "int_ranges": {"keep": [0, 1]}})

    @classmethod
    def decode(cls, encoded: Encoded) -> torch.Tensor:
        keep, values = encoded.tensors["keep"].bool(), encoded.tensors["values"]
        dense = torch.zeros(keep.shape, dtype=values.dtype)
        dense[keep] = values
        return dense


def attach_mask(layer: nn.Module, keep_mask: torch.Tensor, layer_name: str = "") -> Mask:
    """Set `layer.weight`'s keep mask, reusing an existing Mask (so re-pruning never stacks masks)."""
    weight = original(layer)
    if keep_mask.shape != weight.shape:
        raise ValueError(f"mask shape {tuple(keep_mask.shape)} does not match weight shape {tuple(weight.shape)}")
    existing = find_transform(layer, Mask)
    if existing is None:
        check_attachable(layer, "mask", layer_name=layer_name)  # before zeroing anything
    with torch.no_grad():
        weight.mul_(keep_mask.to(weight.dtype))
    if existing is not None:
        existing.mask.copy_(keep_mask)
        return existing
    return attach(layer, Mask(keep_mask), layer_name=layer_name)  # type: ignore[return-value]


def keep_mask_of(layer: nn.Module) -> torch.Tensor:
    """The layer's current keep mask (all True when it has none)."""
    mask = find_transform(layer, Mask)
    return mask.mask if mask is not None else torch.ones_like(original(layer), dtype=torch.bool)
