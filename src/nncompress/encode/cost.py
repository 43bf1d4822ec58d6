"""Exact byte costs of compression candidates in the `.nnc` 3.0 container, for bit allocation.

A candidate for one weight tensor is "keep the `density` fraction of largest |w| (magnitude
pruning, Han et al. 2015), share the kept values with 2^bits k-means centroids (Deep
Compression, Han et al. 2016)": the chain [mask, kmeans] that the Deep Compression flow stores.
Its cost is measured, not modelled: the chain is serialized with the real writer (every codec tried,
relative-index width and Huffman tables chosen as for a real file) and the cost is the growth of a
file holding only that chain over the empty file, bytes(file with the chain) - bytes(empty file).
Alone, each chain's header entry compresses worse than next to the others (zlib shares the JSON
keys), so the per-layer costs overestimate a file by up to ~100 bytes per layer; `plan_bytes`
serializes a whole plan (all chosen chains + the other tensors) for the exact figure, and
`flows/allocate.py` corrects the plan with it.
"""
from __future__ import annotations

import torch

from ..parametrize import Encoded
from ..prune.masks import lowest_k_mask, prune_count
from ..quant.kmeans import SharedWeights
from . import codecs
from .container import Coding, NncModel, serialize

_EMPTY_DESC = {"arch": "candidate"}


def magnitude_keep(weight: torch.Tensor, density: float) -> torch.Tensor:
    """Keep mask of the round(density x n) largest-magnitude entries (at least one)."""
    n_prune = min(prune_count(weight.numel(), 1.0 - density), weight.numel() - 1)
    return lowest_k_mask(weight.detach().abs(), n_prune)


def candidate(weight: torch.Tensor, density: float, bits: int,
              keep: torch.Tensor | None = None) -> tuple[torch.Tensor, list[Encoded]]:
    """(the weight the layer would compute with, its stored chain [mask, kmeans]) for pruning to
    `density` and sharing the kept values among 2^bits centroids (codebook rounded to float16, as
    the Deep Compression flow stores it). `keep`: the density's magnitude mask, if known."""
    w = weight.detach().float().cpu()
    keep = magnitude_keep(w, density) if keep is None else keep
    shared = SharedWeights.fit(w * keep, bits)
    with torch.no_grad():
        shared.codebook.copy_(shared.codebook.half().float())
    value = shared(w).detach()
    mask_stage = Encoded("mask", {"keep": keep.clone(), "values": value[keep]},
                         {"shape": list(keep.shape), "int_ranges": {"keep": [0, 1]}})
    return value, [mask_stage, shared.encode(value)]


def chain_bytes(name: str, chain: list[Encoded], coding: Coding = Coding()) -> int:
    """Bytes the chain adds to a `.nnc` file (sections + its header entry, compressed)."""
    empty = len(serialize(NncModel(dict(_EMPTY_DESC), coding=coding)))
    return len(serialize(NncModel(dict(_EMPTY_DESC), chains={name: chain}, coding=coding))) - empty


def plan_bytes(model_desc: dict, chains: dict[str, list[Encoded]], tensors: dict[str, torch.Tensor],
               meta: dict | None = None, coding: Coding = Coding()) -> int:
    """Exact bytes of the `.nnc` file holding these chains and plain tensors."""
    return len(serialize(NncModel(dict(model_desc), chains=dict(chains), tensors=dict(tensors), meta=dict(meta or {}),
                                  coding=coding)))


class LayerCosts:
    """Byte costs of one weight's candidates, fast: the keep mask's section is coded once per
    density, the cluster indices and codebook once per (density, bits), and the chain's header
    entry is measured once on a full serialization and reused (it barely depends on the candidate:
    codec names and a Huffman table). `bytes(d, b)` is exact for the sections and within a few
    bytes for the header; plans are checked with `plan_bytes`."""

    def __init__(self, name: str, weight: torch.Tensor, coding: Coding = Coding()):
        self.name, self.weight, self.coding = name, weight.detach().float().cpu(), coding
        self._order = torch.argsort(self.weight.abs().flatten(), stable=True)  # as prune.masks.lowest_k_mask
        self._masks: dict[float, tuple[torch.Tensor, int]] = {}
        self._header: int | None = None

    def keep(self, density: float) -> tuple[torch.Tensor, int]:
        """The magnitude keep mask of `density` (as `magnitude_keep`) and its section's bytes."""
        if density not in self._masks:
            n = self.weight.numel()
            keep = torch.ones(n, dtype=torch.bool)
            keep[self._order[: min(prune_count(n, 1.0 - density), n - 1)]] = False
            keep = keep.view_as(self.weight)
            self._masks[density] = (keep, len(codecs.encode(keep, self.coding.masks == "context")[1]))
        return self._masks[density]

    def evaluate(self, density: float, bits: int) -> tuple[torch.Tensor, int]:
        """(the weight the layer would compute with, the candidate's bytes)."""
        keep, mask_bytes = self.keep(density)
        value, chain = candidate(self.weight, density, bits, keep)
        indices, codebook = chain[1].tensors["indices"], chain[1].tensors["codebook"]
        sections = (mask_bytes + len(codecs.encode(indices[keep])[1])
                    + len(codecs.encode(codebook.flatten())[1]))
        if self._header is None:
            self._header = chain_bytes(self.name, chain, self.coding) - sections
        return value, sections + self._header
