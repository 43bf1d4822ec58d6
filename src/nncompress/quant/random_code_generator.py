"""Minimal random coding's shared generator (MIRACLE, Havasi et al., ICLR 2019, alg. 1; the `.nnc`
kind `minimal_random_code`, specified in docs/format.md): the draws encoder and decoder both
regenerate, a layer's random split into blocks, the decoder (`decode_blocks`) and the encoder's
pick (`pick_candidates`).

Integer arithmetic only, so decoding is bit-exact on every machine and version: candidate k,
position j of block b has the counter c = (b K + k) W + j (W the layer's widest block); its draw
sums the twelve 16-bit fields of the splitmix64 hashes (Steele, Lea & Flood 2014) of 3c, 3c + 1 and
3c + 2 under the layer's seed (Irwin-Hall(12): mean 393210, variance 65536^2 - 1), standardized
exactly in float64 and rounded to float32; the weight is sigma_p * z in float32. Blocks: the
layer's weights ordered by the splitmix64 hash of their index under the seed, split into contiguous
runs of nearly equal size.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

MAX_BLOCK_BITS = 16  # 2^16 candidates per block (the container packs integers of up to 16 bits)
MAX_WIDTH = 1 << 12  # weights in one block (the decoder's work per stored index)
MAX_CODED = 1 << 22  # weights of one coded tensor
MASK64 = (1 << 64) - 1
_IRWIN_HALL_MEAN = 12 * 65535 / 2
_IRWIN_HALL_INV_STD = 1.0 / math.sqrt(65536 ** 2 - 1)
CHUNK = 1 << 20  # samples generated at once (encoder and decoder)


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finalizer of each uint64 (wrapping arithmetic)."""
    z = x.astype(np.uint64, copy=True)
    z ^= z >> np.uint64(30)
    z *= np.uint64(0xBF58476D1CE4E5B9)
    z ^= z >> np.uint64(27)
    z *= np.uint64(0x94D049BB133111EB)
    z ^= z >> np.uint64(31)
    return z


def keyed(seed: int, counters: np.ndarray) -> np.ndarray:
    """splitmix64 of seed-offset counters: the state seed + (counter + 1) x the golden gamma."""
    gamma, base = np.uint64(0x9E3779B97F4A7C15), np.uint64(seed & MASK64)
    with np.errstate(over="ignore"):
        return splitmix64(base + (counters.astype(np.uint64) + np.uint64(1)) * gamma)


def _fields16(h: np.ndarray) -> np.ndarray:
    """The sum of the four 16-bit fields of each uint64."""
    low = np.uint64(0xFFFF)
    return (h & low) + ((h >> np.uint64(16)) & low) + ((h >> np.uint64(32)) & low) + (h >> np.uint64(48))


def standard_samples(seed: int, counters: np.ndarray) -> np.ndarray:
    """The shared generator's draw for each counter c: Irwin-Hall(12) of the 16-bit fields of the
    hashes of 3c, 3c + 1, 3c + 2, standardized, float32 (mean 0, variance 1, |z| <= 6)."""
    c = counters.astype(np.uint64) * np.uint64(3)
    with np.errstate(over="ignore"):
        total = _fields16(keyed(seed, c)) + _fields16(keyed(seed, c + np.uint64(1))) \
            + _fields16(keyed(seed, c + np.uint64(2)))
    return ((total.astype(np.float64) - _IRWIN_HALL_MEAN) * _IRWIN_HALL_INV_STD).astype(np.float32)


@dataclass(frozen=True)
class BlockLayout:
    """A layer's random split into blocks: `order` (flat weight positions, block by block) and
    `starts` (block b holds order[starts[b]:starts[b + 1]])."""

    order: np.ndarray
    starts: np.ndarray

    @classmethod
    def of(cls, seed: int, numel: int, blocks: int) -> BlockLayout:
        keys = keyed(seed ^ 0x5DEECE66D, np.arange(numel, dtype=np.uint64))
        order = np.argsort(keys, kind="stable")
        starts = (np.arange(blocks + 1, dtype=np.int64) * numel) // blocks
        return cls(order, starts)

    @property
    def width(self) -> int:
        """The widest block (the counter stride W)."""
        return int(np.diff(self.starts).max()) if len(self.starts) > 1 else 0

    def block_of(self) -> np.ndarray:
        """The block of every flat weight position."""
        blocks = np.repeat(np.arange(len(self.starts) - 1), np.diff(self.starts))
        out = np.empty(len(self.order), dtype=np.int64)
        out[self.order] = blocks
        return out


def block_values(seed: int, layout: BlockLayout, candidates: int, indices: np.ndarray, prior_std: torch.Tensor,
                 blocks: np.ndarray | None = None) -> tuple[np.ndarray, torch.Tensor]:
    """(flat positions, float32 values) of candidate indices[i] of each block (all blocks, or
    `blocks`): what the decoder regenerates and the encoder fixes, bit for bit."""
    blocks = np.arange(len(layout.starts) - 1) if blocks is None else blocks
    sizes = layout.starts[blocks + 1] - layout.starts[blocks]
    offsets = np.arange(int(sizes.sum())) - np.repeat(np.cumsum(sizes) - sizes, sizes)
    owner = np.repeat(blocks, sizes)
    counters = (owner.astype(np.uint64) * np.uint64(candidates) + np.repeat(indices, sizes).astype(np.uint64)) \
        * np.uint64(layout.width) + offsets.astype(np.uint64)
    z = torch.from_numpy(standard_samples(seed, counters))
    return layout.order[layout.starts[owner] + offsets], prior_std.float() * z


def decode_blocks(seed: int, layout: BlockLayout, candidates: int, indices: np.ndarray, prior_std: torch.Tensor,
                  numel: int) -> torch.Tensor:
    """Every block's picked sample at its positions, a flat float32 tensor of `numel` (blocks taken
    about CHUNK weights at a time, so the decoder's memory stays near the layout's)."""
    out = torch.empty(numel, dtype=torch.float32)
    per_chunk = max(1, CHUNK // max(layout.width, 1))
    for first in range(0, len(indices), per_chunk):
        chunk = np.arange(first, min(first + per_chunk, len(indices)))
        positions, values = block_values(seed, layout, candidates, indices[chunk], prior_std, chunk)
        out[torch.from_numpy(positions)] = values
    return out


def pick_candidates(seed: int, layout: BlockLayout, blocks: np.ndarray, k: int, mu: torch.Tensor, sigma: torch.Tensor,
          prior: torch.Tensor, generator: torch.Generator) -> np.ndarray:
    """One candidate per block, drawn with probability proportional to q(w_k) / p(w_k) (Gumbel-max
    over the log importance weights, the terms that do not depend on k left out), the candidates
    taken about CHUNK samples at a time with a running maximum."""
    width = layout.width
    sizes = layout.starts[blocks + 1] - layout.starts[blocks]
    offsets = np.arange(width)
    valid = torch.from_numpy(offsets[None, :] < sizes[:, None])[:, None, :]  # (blocks, 1, width)
    positions = torch.from_numpy(layout.order[np.minimum(layout.starts[blocks][:, None] + offsets[None, :],
                                                         len(layout.order) - 1)])
    m, s = mu[positions][:, None, :], sigma[positions][:, None, :]
    best = torch.full((len(blocks),), -math.inf, dtype=torch.float64)
    picks = torch.zeros(len(blocks), dtype=torch.int64)
    step = max(1, CHUNK // max(len(blocks) * width, 1))
    for first in range(0, k, step):
        ks = np.arange(first, min(first + step, k), dtype=np.uint64)
        counters = ((blocks.astype(np.uint64)[:, None, None] * np.uint64(k) + ks[None, :, None]) * np.uint64(width)
                    + offsets.astype(np.uint64)[None, None, :])
        x = prior.float() * torch.from_numpy(standard_samples(seed, counters))  # (blocks, candidates, width)
        log_ratio = -(x - m).square() / (2 * s.square()) + x.square() / (2 * prior.float().square())
        log_weight = torch.where(valid, log_ratio, 0.0).sum(-1).double()  # (blocks, candidates)
        gumbel = -torch.log(-torch.log(torch.rand(log_weight.shape, generator=generator, dtype=torch.float64)
                                       .clamp_min(1e-300)))
        score, where = (log_weight + gumbel).max(-1)
        better = score > best
        best, picks = torch.where(better, score, best), torch.where(better, where + first, picks)
    return picks.numpy()
