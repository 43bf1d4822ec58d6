"""N:M fine-grained structured sparsity (NVIDIA's 2:4): at most N non-zeros in every M consecutive
weights along the input (reduction) dimension.

Yoo, "Compressing Neural Networks" (SNU 2023), slides "RECIPE FOR 2:4 SPARSE NETWORK TRAINING" and
"2:4 COMPRESSED MATRIX FORMAT"; Mishra et al., "Accelerating Sparse Deep Neural Networks" (2021):
1) train dense, 2) prune to 2:4 by magnitude, 3) retrain with the same hyper-parameters keeping the
zero pattern fixed (the `NMMask` parametrization multiplies by the fixed mask, so pruned weights get
zero gradient and stay zero). Stored form: the kept values (N/M of the weights: half for 2:4) plus a
log2(M)-bit index per kept value (2 bits for 2:4: 12.5% overhead over 16-bit values, 25% over 8-bit).

Which weights form a group (the "lowered" weight, `nm_matrix`), as NVIDIA's ASP does
(apex.contrib.sparsity, `create_mask`):
- Linear [out, in]: rows = output features, groups of M consecutive input features;
- Conv1d/2d/3d [K, C/g, *kernel]: the weight is permuted to [*kernel, K, C/g] and viewed as a
  matrix with C/g columns: groups of M consecutive *input channels* at one kernel position and one
  output channel, i.e. the reduction order (r, s, c) with c fastest of an NHWC implicit GEMM.
So the input dimension (in_features, or in_channels / groups) must be a multiple of M.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..config import Context, Method
from ..parametrize import Encoded, check_attachable, detach, find_transform, original, transform_kind, attach
from ..registry import register
from ..validate import UserError, check_int_range
from .mask import Mask
from .masks import check_weight, density, nm_keep_mask, nm_matrix, nm_unmatrix  # noqa: F401  (nm_* re-exported)

MAX_M = 256  # group length (indices are stored in ceil(log2(M)) bits)


def input_dim(weight: torch.Tensor) -> int:
    """Length of the dimension split into groups: in_features, or in_channels / groups for a conv."""
    return weight.shape[1] if weight.dim() >= 2 else weight.shape[0]


def check_nm_shape(weight: torch.Tensor, n: int, m: int, layer: str) -> None:
    """UserError naming the layer when its input dimension is not a multiple of M."""
    k = input_dim(weight)
    if k % m:
        what = "in_features" if weight.dim() == 2 else "in_channels / groups"
        raise UserError(f"{n}:{m} sparsity: layer {layer!r} has {what}={k}, which is not a multiple of m={m} "
                        f"(groups of {m} consecutive input weights); exclude it, e.g. "
                        f"targets=Select(exclude=({layer!r},))")


def nm_slots(keep_mask: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Per group, the N positions (0..M-1, ascending) the compressed format stores: the kept ones,
    padded with pruned positions when a group keeps fewer than N. Shape [rows, K / M, N]."""
    keep = nm_matrix(keep_mask).reshape(-1, input_dim(keep_mask) // m, m)
    over = keep.sum(-1) > n
    if bool(over.any()):
        raise UserError(f"mask keeps more than {n} of {m} weights in {int(over.sum())} groups; it is not {n}:{m}")
    order = torch.argsort((~keep).to(torch.int8), dim=-1, stable=True)[..., :n]
    return order.sort(dim=-1).values


@transform_kind("nm")
class NMMask(Mask):
    """w -> w * mask with an N:M keep mask; stored as the 2:4 compressed format.

    `encode`: "values" [rows, (K / M) * N] (the kept weights: N/M of the tensor) and "indices" (each
    value's position 0..M-1 in its group, declared in [0, M-1] so `convert_` / the container pack it
    in log2(M) bits). `decode` scatters the values back: exact. If a later unstructured method has
    replaced the mask by one that is not N:M, it is stored as a plain bitmap `Mask`."""

    def __init__(self, keep_mask: torch.Tensor, n: int = 2, m: int = 4):
        super().__init__(keep_mask)
        self.n, self.m = n, m

    def is_nm(self) -> bool:
        """Does the mask keep at most N of every M? (A later unstructured method may have replaced it:
        `attach_mask` reuses any Mask.)"""
        keep = nm_matrix(self.mask).reshape(-1, input_dim(self.mask) // self.m, self.m)
        return bool((keep.sum(-1) <= self.n).all())

    def encode(self, w: torch.Tensor) -> Encoded:
        if not self.is_nm():  # stored as the plain bitmap mask it has become
            bitmap = Mask.encode(self, w)
            return Encoded(Mask.kind, bitmap.tensors, bitmap.meta)
        masked = self.forward(w).detach()
        slots = nm_slots(self.mask, self.n, self.m)
        rows, groups, _ = slots.shape
        values = nm_matrix(masked).reshape(rows, groups, self.m).gather(-1, slots)
        return Encoded(self.kind, {"values": values.reshape(rows, groups * self.n),
                                   "indices": slots.reshape(rows, groups * self.n).to(torch.uint8)},
                       {"shape": list(w.shape), "n": self.n, "m": self.m, "int_ranges": {"indices": [0, self.m - 1]}})

    @classmethod
    def decode(cls, encoded: Encoded) -> torch.Tensor:
        if encoded.kind == Mask.kind:
            return Mask.decode(encoded)
        shape, n, m = tuple(encoded.meta["shape"]), int(encoded.meta["n"]), int(encoded.meta["m"])
        values, indices = encoded.tensors["values"], encoded.tensors["indices"].long()
        cols = shape[1] if len(shape) >= 2 else shape[0]
        rows = math.prod(shape) // cols
        dense = torch.zeros(rows, cols // m, m, dtype=values.dtype, device=values.device)
        dense.scatter_(-1, indices.reshape(rows, cols // m, n), values.reshape(rows, cols // m, n))
        return nm_unmatrix(dense.reshape(rows, cols), shape)

    def extra_repr(self) -> str:
        return f"{self.n}:{self.m}"


def nm_storage_bytes(numel: int, n: int, m: int, value_bits: int) -> dict[str, float]:
    """Bytes of the N:M compressed format for a tensor of `numel` weights: values (N/M of them at
    `value_bits`), indices (ceil(log2 M) bits per value) and the metadata overhead relative to the
    values: log2(M) / value_bits (2:4: 2/16 = 12.5% for 16-bit values, 2/8 = 25% for 8-bit)."""
    kept = numel // m * n
    index_bits = max(1, math.ceil(math.log2(m)))
    values = kept * value_bits / 8
    indices = math.ceil(kept * index_bits / 8)
    return {"values": values, "indices": indices, "overhead": index_bits / value_bits,
            "dense": numel * value_bits / 8}


def attach_nm_mask(layer: nn.Module, keep_mask: torch.Tensor, n: int, m: int, layer_name: str = "") -> NMMask:
    """Set `layer.weight`'s N:M mask, zeroing the pruned originals. An existing NMMask is updated;
    an existing plain Mask is replaced by an NMMask keeping the intersection (magnitude pruning, then
    2:4, keeps at most 2 of 4 and never revives a pruned weight)."""
    weight = original(layer)
    existing = find_transform(layer, Mask)
    if existing is not None:
        keep_mask = keep_mask & existing.mask
    with torch.no_grad():
        weight.mul_(keep_mask.to(weight.dtype))
    if isinstance(existing, NMMask) and (existing.n, existing.m) == (n, m):
        existing.mask.copy_(keep_mask)
        return existing
    if existing is not None:
        detach(layer, Mask)
    return attach(layer, NMMask(keep_mask, n, m), layer_name=layer_name)  # type: ignore[return-value]


@register("nm")
@dataclass(frozen=True, kw_only=True)
class NMPrune(Method):
    """Keep the N largest-|w| weights of every M consecutive input weights (2:4 by default).

    Args:
        n, m: at most `n` non-zeros in every `m` consecutive weights along the input dimension
            (1 <= n < m <= 256); every targeted layer's input dimension must be a multiple of `m`.
        permute: first search an input-channel permutation per layer that keeps more magnitude
            (Pool & Yu 2021, `prune/permutation.py`) and apply it to the producing layer too, so
            the network computes the same function; layers whose producer cannot be found keep
            the identity. The report records kept magnitude with and without it.

    Example:
        >>> import nncompress as nc, torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(8, 4))
        >>> _ = nc.apply_(net, NMPrune(n=2, m=4))
        >>> int((net[0].weight != 0).sum()), net[0].weight.numel()
        (16, 32)
    """

    n: int = 2
    m: int = 4
    permute: bool = False

    def __post_init__(self) -> None:
        check_int_range("m", self.m, 2, MAX_M)
        check_int_range("n", self.n, 1, self.m - 1)

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        layers = self.targets.layers(model)
        if not layers:
            raise UserError(f"NMPrune: no layer matches {self.targets}")
        for name, layer in layers.items():  # all or nothing: check every layer first
            check_weight(layer.weight, name, "NMPrune")
            check_nm_shape(layer.weight, self.n, self.m, name)
            check_attachable(layer, "mask", layer_name=name)
        permutations: dict[str, dict] = {}
        if self.permute:
            from .permutation import permute_for_nm_
            permutations = permute_for_nm_(model, list(layers), self.n, self.m)
        masks = {}
        for name, layer in layers.items():
            masks[name] = attach_nm_mask(layer, nm_keep_mask(layer.weight.abs(), self.n, self.m), self.n, self.m,
                                         layer_name=name).mask
        kept = sum(int(mk.sum()) for mk in masks.values())
        total = sum(mk.numel() for mk in masks.values())
        ctx.record(self, densities={nm: density(mk) for nm, mk in masks.items()}, sparsity=1 - kept / total,
                   pattern=f"{self.n}:{self.m}", permutations=permutations)
        return model
