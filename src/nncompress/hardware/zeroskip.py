"""Cycle-level model of the lecture's zero-skipping outer-product PE array.

Yoo, "Compressing Neural Networks" (SNU 2023), slides "How to Exploit Zero-Skipping in Our
Accelerator?" to "Zero skipping enables a reduction in total cycle from 4 to 3 cycles": a layer
computes O = W I with W [M, K] (the lowered weight) and I [K, N] (the input activations, im2col
for a convolution). A 2-D array of R x C PEs holds one R x C tile of O. Each clock cycle it reads
one column of W's tile (R values) and the matching row of I's tile (C values) into its line
buffers, and every PE multiplies and accumulates (an outer product): a dense tile takes K cycles.
Column pruning makes whole columns of W zero; metadata (one bit per column, "as in the case of
Sparse Tensor Core") marks them and the array skips both reads and the cycle: a tile takes as many
cycles as its row block of W has non-zero columns. Lecture example: W 4 x 4 with the 3rd column
pruned, I 4 x 4, a 4 x 4 array: 4 cycles -> 3 (columns 1, 2, 4 are read).

Counted per layer (`simulate`): cycles with and without skipping, element reads of W and I, metadata
bits, and utilisation = MACs with a non-zero weight / (cycles x R x C) (idle PEs of partial edge
tiles and zero weights inside non-zero columns both lower it). A model's layers are lowered with
their real output sizes (`model_zero_skip`): Linear W [out, in], N = batch; Conv W [K, C/g kh kw],
N = batch x output positions (one tile grid per group).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn.utils.parametrize import type_before_parametrizations

from ..analysis.hooks import eval_with_hooks
from ..validate import UserError

ZERO_SKIP_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass
class ZeroSkipStats:
    """One layer (or a sum of layers) on an R x C array."""

    name: str
    rows: int  # M: output features / channels
    depth: int  # K: reduction length (columns of the lowered weight)
    n: int  # N: output columns (batch x output positions)
    tiles: int
    dense_cycles: int
    cycles: int
    weight_reads: int
    dense_weight_reads: int
    activation_reads: int
    dense_activation_reads: int
    metadata_bits: int
    macs: int  # multiply-accumulates with a non-zero weight
    pe_slots: int  # R x C per cycle, for utilisation
    zero_columns: float  # fraction of W's columns that are zero over all rows

    @property
    def speedup(self) -> float:
        return self.dense_cycles / max(self.cycles, 1)

    @property
    def utilisation(self) -> float:
        return self.macs / max(self.cycles * self.pe_slots, 1)

    @property
    def dense_utilisation(self) -> float:
        return self.macs / max(self.dense_cycles * self.pe_slots, 1)

    def as_dict(self) -> dict:
        return {**asdict(self), "speedup": self.speedup, "utilisation": self.utilisation,
                "dense_utilisation": self.dense_utilisation}


def check_array(array: tuple[int, int]) -> tuple[int, int]:
    """(R, C) of the PE array: two integers in [1, 65536]."""
    if (not isinstance(array, (tuple, list)) or len(array) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 65536 for v in array)):
        raise UserError(f"array={array!r} must be (rows, columns) of the PE array, two integers in [1, 65536]")
    return int(array[0]), int(array[1])


def column_schedule(weight_tile: torch.Tensor) -> list[int]:
    """The columns of one W tile the array reads, cycle by cycle (0-based): the non-zero ones, in order."""
    return torch.nonzero(weight_tile.detach().ne(0).any(0)).flatten().tolist()


def run_tile(weight_tile: torch.Tensor, input_tile: torch.Tensor, skip_zero_columns: bool = True) -> tuple[torch.Tensor, int]:
    """Functional model of one tile: accumulate one outer product W[:, k] I[k, :] per cycle over the
    columns the array reads; returns (output tile, cycles). With skipping the output is still W I."""
    if weight_tile.shape[1] != input_tile.shape[0]:
        raise UserError(f"tile shapes {list(weight_tile.shape)} x {list(input_tile.shape)} do not multiply")
    schedule = column_schedule(weight_tile) if skip_zero_columns else list(range(weight_tile.shape[1]))
    acc = torch.zeros(weight_tile.shape[0], input_tile.shape[1], dtype=torch.promote_types(weight_tile.dtype, input_tile.dtype))
    for k in schedule:  # one clock cycle: read a W column and an I row, every PE does one MAC
        acc += torch.outer(weight_tile[:, k], input_tile[k])
    return acc, len(schedule)


def simulate(weight: torch.Tensor, n: int, array: tuple[int, int] = (4, 4), name: str = "") -> ZeroSkipStats:
    """Cycles, reads and utilisation of O = W I for a lowered weight `weight` [M, K] and an input
    with `n` columns, tiled over an R x C array (see the module doc)."""
    r, c = check_array(array)
    if weight.dim() != 2:
        raise UserError(f"{name or 'weight'}: simulate takes the lowered 2-D weight [M, K], got shape {list(weight.shape)}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise UserError(f"{name or 'weight'}: n={n!r} (columns of the input) must be an integer >= 1")
    nonzero = weight.detach().ne(0)
    m, k = nonzero.shape
    col_tiles = math.ceil(n / c)
    cycles = weight_reads = dense_weight_reads = 0
    for start in range(0, m, r):
        block = nonzero[start:start + r]
        live = int(block.any(0).sum())
        cycles += live * col_tiles
        weight_reads += live * block.shape[0] * col_tiles
        dense_weight_reads += k * block.shape[0] * col_tiles
    row_tiles = math.ceil(m / r)
    live_total = cycles // col_tiles if col_tiles else 0  # sum over row blocks of non-zero columns
    return ZeroSkipStats(
        name=name, rows=m, depth=k, n=n, tiles=row_tiles * col_tiles, dense_cycles=row_tiles * col_tiles * k,
        cycles=cycles, weight_reads=weight_reads, dense_weight_reads=dense_weight_reads,
        activation_reads=live_total * n, dense_activation_reads=row_tiles * k * n,
        metadata_bits=row_tiles * col_tiles * k, macs=int(nonzero.sum()) * n, pe_slots=r * c,
        zero_columns=float((~nonzero.any(0)).sum()) / max(k, 1))


def lowered_weights(layer: nn.Module) -> list[torch.Tensor]:
    """The 2-D weights [M, K] a layer multiplies with (one per convolution group)."""
    weight = layer.weight.detach()
    if weight.dim() == 2:
        return [weight]
    groups = getattr(layer, "groups", 1)
    per_group = weight.shape[0] // groups
    return [weight[g * per_group:(g + 1) * per_group].reshape(per_group, -1) for g in range(groups)]


def add_stats(name: str, parts: list[ZeroSkipStats]) -> ZeroSkipStats:
    """Sum of several layers' (or groups') figures; `zero_columns` weighted by columns."""
    total = {f: sum(getattr(p, f) for p in parts) for f in ("rows", "tiles", "dense_cycles", "cycles", "weight_reads",
                                                             "dense_weight_reads", "activation_reads",
                                                             "dense_activation_reads", "metadata_bits", "macs")}
    depth = sum(p.depth for p in parts)
    zero = sum(p.zero_columns * p.depth for p in parts) / max(depth, 1)
    return ZeroSkipStats(name=name, depth=depth, n=max((p.n for p in parts), default=0),
                         pe_slots=parts[0].pe_slots if parts else 1, zero_columns=zero, **total)


@torch.no_grad()
def model_zero_skip(model: nn.Module, example: torch.Tensor, array: tuple[int, int] = (4, 4)) -> list[ZeroSkipStats]:
    """Per weight layer of `model` (Linear / Conv, parametrized or not), the zero-skip figures for the
    input `example` (its batch size counts in N); the last row is the model's total."""
    check_array(array)
    columns: dict[str, int] = {}

    def hook(name: str):
        def record(module: nn.Module, inputs, output) -> None:
            channels = output.shape[-1] if isinstance(module, nn.Linear) else output.shape[1]
            columns[name] = output.numel() // channels
        return record

    layers = {n: m for n, m in model.named_modules() if issubclass(type_before_parametrizations(m), ZERO_SKIP_LAYERS)}
    with eval_with_hooks(model, {name: hook(name) for name in layers}):
        model(example)
    rows = []
    for name, layer in layers.items():
        if name not in columns:
            continue
        parts = [simulate(w, columns[name], array, name) for w in lowered_weights(layer)]
        rows.append(parts[0] if len(parts) == 1 else add_stats(name, parts))
    rows.append(add_stats("total", rows))
    return rows
