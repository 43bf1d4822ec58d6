"""K-means weight sharing (Deep Compression, Han et al. ICLR 2016; "K-Means-based Weight Quantization" in Han,
EfficientML.ai Lecture 05 "Quantization Part I", MIT; "Weight clustering" in Yoo, "Compressing Neural
Networks: Pruning and Quantization", SNU 2023).

Each layer's non-zero weights are clustered into 2^bits shared values (the codebook); the layer
stores one small index per weight. Pruned zeros stay zero and are not clustered.

1-D k-means is solved exactly per Lloyd step with one sort and prefix sums: for sorted values the
clusters are contiguous segments split at the midpoints between neighbouring centroids, so each
step is a binary search per centroid plus two prefix-sum lookups (O(k log n) after the sort).
Empty clusters are re-seeded inside the most populous cluster.

`SharedWeights` is the parametrization: the model computes with codebook[indices], and the
codebook is a trainable parameter, so during fine-tuning autograd sums the gradients of all weights
in a cluster ("grouped by the color and summed together", Han 2016 as quoted in Yoo's lecture:
dL/dC_k = sum over w_ij in cluster k of dL/dw_ij) and the optimizer moves the
centroid; the indices stay fixed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..config import Context, Method, per_layer
from ..prune.masks import check_weight
from ..parametrize import Encoded, WeightTransform, attach, transform_kind
from ..registry import register
from ..validate import UserError, check_choice, check_int_range
from .ptq import quantizable_layers

INITS = ("linear", "density", "random")


def _initial_centroids(sorted_values: np.ndarray, k: int, init: str, seed: int) -> np.ndarray:
    if init == "linear":  # the paper's recommendation: evenly spaced between min and max
        return np.linspace(sorted_values[0], sorted_values[-1], k)
    if init == "density":  # equal-count quantiles of the weight CDF
        return sorted_values[np.round(np.linspace(0, len(sorted_values) - 1, k)).astype(np.int64)].astype(np.float64)
    picks = np.random.default_rng(seed).choice(len(sorted_values), size=k, replace=len(sorted_values) < k)
    return np.sort(sorted_values[picks]).astype(np.float64)


def kmeans_1d(values: np.ndarray | torch.Tensor, k: int, *, init: str = "linear", max_iter: int = 100,
              seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Cluster 1-D `values` into `k` centroids (fewer if there are fewer distinct values); returns
    (centroids sorted ascending, index per value)."""
    check_choice("init", init, INITS)
    flat = np.asarray(values.detach().cpu() if isinstance(values, torch.Tensor) else values, dtype=np.float32).ravel()
    if flat.size == 0:
        raise UserError("k-means needs at least one value; the layer has no non-zero weights")
    if not np.isfinite(flat).all():
        raise UserError(f"k-means: {int((~np.isfinite(flat)).sum())} of the values are NaN or infinite")
    v = np.sort(flat)
    k = min(k, int(np.count_nonzero(np.diff(v))) + 1)  # never more clusters than distinct values
    prefix = np.concatenate([[0.0], np.cumsum(v, dtype=np.float64)])
    centroids = _initial_centroids(v, k, init, seed)
    tolerance = 1e-6 * float(v[-1] - v[0])
    for _ in range(max_iter):
        starts, stops = _segments(v, centroids)
        counts = stops - starts
        means = np.where(counts > 0, (prefix[stops] - prefix[starts]) / np.maximum(counts, 1), centroids)
        means = _reseed_empty(v, means, counts, starts)
        shift = np.abs(np.sort(means) - centroids).max()
        centroids = np.sort(means)
        if shift <= tolerance:
            break
    bounds = torch.from_numpy(((centroids[:-1] + centroids[1:]) / 2).astype(np.float32))
    indices = torch.bucketize(torch.from_numpy(flat), bounds).numpy()
    return centroids.astype(np.float32), indices


def _segments(sorted_values: np.ndarray, centroids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    midpoints = ((centroids[:-1] + centroids[1:]) / 2).astype(sorted_values.dtype)  # same dtype: no copy
    cuts = np.searchsorted(sorted_values, midpoints)
    return np.concatenate([[0], cuts]), np.concatenate([cuts, [len(sorted_values)]])


def _reseed_empty(v: np.ndarray, means: np.ndarray, counts: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Move each empty cluster to a quartile point of the most populous cluster's segment."""
    for empty in np.flatnonzero(counts == 0):
        big = int(np.argmax(counts))
        if counts[big] < 2:
            break
        means[empty] = v[starts[big] + counts[big] // 4]
        counts[big] -= counts[big] // 4
        counts[empty] = 1
    return means


@transform_kind("kmeans")
class SharedWeights(WeightTransform):
    """w -> codebook[indices] where indices >= 0, else 0 (pruned); `codebook` is trainable."""

    def __init__(self, codebook: torch.Tensor, indices: torch.Tensor):
        super().__init__()
        self.codebook = nn.Parameter(codebook.detach().clone().float())
        self.register_buffer("indices", indices.detach().clone().long())

    @classmethod
    def fit(cls, w: torch.Tensor, bits: int, init: str = "linear") -> SharedWeights:
        """Cluster the non-zero entries of `w` into 2^bits centroids (zeros get index -1)."""
        w = w.detach()
        nonzero = w != 0
        indices = torch.full(w.shape, -1, dtype=torch.long)
        if not nonzero.any():  # a fully pruned layer: nothing to share
            return cls(torch.zeros(1), indices)
        centroids, idx = kmeans_1d(w[nonzero], 1 << bits, init=init)
        indices[nonzero] = torch.from_numpy(idx).long()
        return cls(torch.from_numpy(centroids), indices)

    @property
    def storage_bits(self) -> int:  # type: ignore[override]
        """Bits of a cluster index (Deep Compression stores indices, not values)."""
        return max(1, math.ceil(math.log2(len(self.codebook))))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        shared = self.codebook[self.indices.clamp(min=0)]
        return torch.where(self.indices >= 0, shared, torch.zeros_like(shared))

    def encode(self, w: torch.Tensor) -> Encoded:
        """The codebook and one cluster index per weight (-1: pruned, value 0)."""
        return Encoded(self.kind, {"codebook": self.codebook.detach().clone(), "indices": self.indices.clone()},
                       {"shape": list(self.indices.shape), "bits": self.storage_bits,
                        "int_ranges": {"indices": [-1, (1 << self.storage_bits) - 1]}})

    @classmethod
    def decode(cls, encoded: Encoded) -> torch.Tensor:
        codebook, indices = encoded.tensors["codebook"].float(), encoded.tensors["indices"].long()
        shared = codebook[indices.clamp(min=0)]
        return torch.where(indices >= 0, shared, torch.zeros_like(shared))

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: object) -> None:
        """Adopt the stored codebook size: it depends on the data (fewer distinct weights, fewer
        clusters), so a recipe replayed on a fresh model may have built another one."""
        incoming = state_dict.get(prefix + "codebook")
        if isinstance(incoming, torch.Tensor) and incoming.dim() == 1 and incoming.shape != self.codebook.shape:
            self.codebook = nn.Parameter(torch.empty_like(incoming, dtype=self.codebook.dtype),
                                         requires_grad=self.codebook.requires_grad)
        super()._load_from_state_dict(state_dict, prefix, *args)

    def extra_repr(self) -> str:
        return f"clusters={self.codebook.numel()}"


@register("kmeans")
@dataclass(frozen=True, kw_only=True)
class KMeansQuant(Method):
    """Deep Compression weight sharing: 2^bits shared values per layer, fine-tunable codebook.

    Args:
        bits: index bits for every targeted layer (the paper: 8 for conv, 5 for fc).
        layer_bits: per-layer overrides by layer pattern, e.g. {"fc3": 6, "type:Conv2d": 8} (a name,
            "re:<regex>" or "type:<Class>"; see `config.per_layer`).
        init: centroid initialisation: linear (default, as the paper recommends), density, random.
    Example:
        >>> import nncompress as nc, torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(16, 16))
        >>> _ = nc.quantize_(net, nc.KMeansQuant(bits=2))
        >>> len(torch.unique(net[0].weight))
        4
    """

    bits: int = 5
    layer_bits: dict[str, int] = field(default_factory=dict)
    init: str = "linear"

    def __post_init__(self) -> None:
        check_int_range("bits", self.bits, 1, 16)
        for name, bits in self.layer_bits.items():
            check_int_range(f"layer_bits[{name!r}]", bits, 1, 16)
        check_choice("init", self.init, INITS)


    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        layers = quantizable_layers(self, model, activations=False)
        for name, layer in layers.items():
            check_weight(layer.weight, name, "KMeansQuant")
        bits = per_layer(self.layer_bits, layers, self.bits, "layer_bits")
        for name, layer in layers.items():
            attach(layer, SharedWeights.fit(layer.weight, bits[name], self.init), layer_name=name)
        ctx.record(self, bits=bits)
        return model
