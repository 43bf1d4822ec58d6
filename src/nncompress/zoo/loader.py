"""A fast batch iterator over in-memory tensors (no per-sample collation), seeded and shardable.

`TensorLoader` is what the zoo returns; any iterable of `(inputs, targets)` batches, such as a
`torch.utils.data.DataLoader`, works everywhere a loader is expected.
"""
from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from ..validate import UserError


class TensorLoader:
    """Iterate `(x, y)` batches; with `shuffle`, the order depends only on (seed, epoch).

    With `world_size > 1` each rank takes a disjoint strided shard of every epoch's order
    (like `DistributedSampler`), padded so all ranks see the same number of batches.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int = 64, *, shuffle: bool = False,
                 seed: int = 0, rank: int = 0, world_size: int = 1) -> None:
        if len(x) != len(y):
            raise UserError(f"inputs and targets differ in length: {len(x)} vs {len(y)}")
        if batch_size < 1:
            raise UserError(f"batch_size={batch_size} must be >= 1")
        self.x, self.y, self.batch_size = x, y, batch_size
        self.shuffle, self.seed, self.rank, self.world_size = shuffle, seed, rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose shuffled order the next iteration uses."""
        self.epoch = epoch

    def _order(self) -> torch.Tensor:
        n = len(self.x)
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
            order = torch.randperm(n, generator=gen)
        else:
            order = torch.arange(n)
        if self.world_size > 1:
            per_rank = math.ceil(n / self.world_size)
            order = torch.cat([order, order[: per_rank * self.world_size - n]])
            order = order[self.rank :: self.world_size]
        return order

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self._order()
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            yield self.x[idx], self.y[idx]

    def __len__(self) -> int:
        n = math.ceil(len(self.x) / self.world_size) if self.world_size > 1 else len(self.x)
        return math.ceil(n / self.batch_size)

    @property
    def num_samples(self) -> int:
        return len(self.x)
