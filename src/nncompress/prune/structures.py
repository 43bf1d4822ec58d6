"""Pruning structures and the structured keep mask (coarse-grained pruning in Yoo's lecture "Pruning
granularity": "less flexible pruning index choice ... easy to accelerate (just a smaller matrix!)").

A structure is a set of weight dimensions that index one prunable unit; the mask is constant along the
other dimensions. For a weight of shape (out, in, kh, kw):

- "channel" (output filter): dims (0,), one unit per filter W[o];
- "input_channel": dims (1,), one unit per input channel W[:, s];
- "column": dims (1, 2, 3), one unit per column of the lowered (im2col) weight matrix
  W_mat (out x in*kh*kw), i.e. W[:, s, i, j] (the lecture's column pruning for zero-skipping
  accelerators, and the groups Gamma_ijs of Lebedev & Lempitsky's group-wise brain damage).

`StructuredMask` is a `Mask` (same `mask` buffer, same gradient and reload behaviour) whose `encode`
stores one bit per unit instead of one per weight.
"""
from __future__ import annotations

import torch
from torch import nn

from ..parametrize import Encoded, attach, check_attachable, find_transform, original, transform_kind
from ..validate import check_choice
from .mask import Mask

STRUCTURES = ("channel", "input_channel", "column")
NORMS = ("l1", "l2")


def structure_dims(structure: str, ndim: int) -> tuple[int, ...]:
    """The weight dims that index one unit of `structure` (see the module doc)."""
    check_choice("structure", structure, STRUCTURES)
    if ndim < 2:
        return (0,)
    return {"channel": (0,), "input_channel": (1,), "column": tuple(range(1, ndim))}[structure]


def _other_dims(dims: tuple[int, ...], ndim: int) -> tuple[int, ...]:
    return tuple(d for d in range(ndim) if d not in dims)


def unit_norms(weight: torch.Tensor, dims: tuple[int, ...], norm: str = "l2") -> torch.Tensor:
    """One score per unit (shape `weight.shape[d] for d in dims`): the L1 norm sum |w| or the L2 norm
    sqrt(sum w^2) of the unit's weights (Li et al. 2017 rank filters by L1; the lecture's column pruning
    uses the column's sum of absolute weights)."""
    check_choice("norm", norm, NORMS)
    w = weight.detach().float()
    reduce = _other_dims(dims, w.dim())
    if not reduce:  # one weight per unit (a bias): both norms are |w|
        return w.abs()
    return w.abs().sum(reduce) if norm == "l1" else w.square().sum(reduce).sqrt()


def expand_keep(unit_keep: torch.Tensor, shape: torch.Size | tuple[int, ...], dims: tuple[int, ...]) -> torch.Tensor:
    """A per-weight keep mask of `shape` from a per-unit keep tensor (constant along the other dims)."""
    view = [shape[d] if d in dims else 1 for d in range(len(shape))]
    return unit_keep.bool().reshape(view).expand(*shape).clone()


def reduce_keep(keep: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor | None:
    """The per-unit keep tensor of a per-weight mask, or None when the mask is not constant along
    the units (a finer pruning ran on top of it)."""
    reduce = _other_dims(dims, keep.dim())
    unit = keep.any(dim=reduce) if reduce else keep.clone()
    return unit if torch.equal(expand_keep(unit, keep.shape, dims), keep) else None


@transform_kind("structured_mask")
class StructuredMask(Mask):
    """w -> w * mask where the mask is constant along a structure's units (`dims`); stores one bit
    per unit: `encode` gives {"keep": per-unit bools, "values": kept weights in C order}."""

    def __init__(self, keep_mask: torch.Tensor, dims: tuple[int, ...]):
        super().__init__(keep_mask)
        self.dims = tuple(int(d) for d in dims)

    def extra_repr(self) -> str:
        return f"dims={self.dims}"

    def encode(self, w: torch.Tensor) -> Encoded:
        unit = reduce_keep(self.mask, self.dims)
        if unit is None:  # a finer mask was written into this one: store it per weight
            return Encoded("mask", *_plain_encoding(self, w))
        masked = self.forward(w).detach()
        return Encoded(self.kind, {"keep": unit, "values": masked[self.mask]},
                       {"shape": list(self.mask.shape), "dims": list(self.dims), "int_ranges": {"keep": [0, 1]}})

    @classmethod
    def decode(cls, encoded: Encoded) -> torch.Tensor:
        if "dims" not in encoded.meta:
            return Mask.decode(encoded)
        shape, dims = tuple(int(s) for s in encoded.meta["shape"]), tuple(int(d) for d in encoded.meta["dims"])
        unit, values = encoded.tensors["keep"], encoded.tensors["values"]
        if sorted(set(dims)) != list(dims) or not all(0 <= d < len(shape) for d in dims) \
                or tuple(unit.shape) != tuple(shape[d] for d in dims):
            raise ValueError(f"structured mask: keep {list(unit.shape)} does not index dims {list(dims)} of {list(shape)}")
        keep = expand_keep(unit, shape, dims)
        if values.device.type != "meta" and int(keep.sum()) != values.numel():
            raise ValueError(f"structured mask keeps {int(keep.sum())} weights but stores {values.numel()} values")
        # masked_scatter fills the kept positions in C order, as dense[keep] = values, and runs on the
        # meta device, so a file's declared shape is checked before anything is allocated
        return torch.zeros(shape, dtype=values.dtype, device=values.device).masked_scatter(keep, values)


def _plain_encoding(mask: Mask, w: torch.Tensor) -> tuple[dict, dict]:
    plain = Mask.encode(mask, w)
    return plain.tensors, plain.meta


def check_mask_targets(targets: list[tuple[nn.Module, str, str]]) -> None:
    """CompositionError (naming the layer) if any (layer, tensor name, layer name) cannot take a mask;
    methods call it for every tensor before changing any."""
    for layer, tensor_name, name in targets:
        if find_transform(layer, Mask, tensor_name) is None:
            check_attachable(layer, "mask", tensor_name, layer_name=name)


def attach_structured_mask(layer: nn.Module, unit_keep: torch.Tensor, dims: tuple[int, ...], *,
                           tensor_name: str = "weight", layer_name: str = "") -> Mask:
    """Mask `layer.<tensor_name>` by units: the new keep mask is intersected with any mask already
    there (pruned weights stay pruned) and the pruned originals are zeroed (so weight decay and
    momentum keep them at zero), as `attach_mask` does for fine-grained masks."""
    weight = original(layer, tensor_name)
    keep = expand_keep(unit_keep.to(weight.device), weight.shape, dims)
    existing = find_transform(layer, Mask, tensor_name)
    if existing is not None:
        keep &= existing.mask
    else:
        check_attachable(layer, "mask", tensor_name, layer_name=layer_name)
    with torch.no_grad():
        weight.mul_(keep.to(weight.dtype))
    if existing is not None:
        existing.mask.copy_(keep)
        return existing
    return attach(layer, StructuredMask(keep, dims), tensor_name, layer_name=layer_name)  # type: ignore[return-value]
