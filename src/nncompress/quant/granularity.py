"""Which elements share one scale / zero point ("Quantization granularity" in Edge Computing Lecture 06
"Quantization and Pruning": per-tensor S = |r|_max / q_max over the whole tensor vs per-channel S_c =
|r_c|_max / q_max).

- PerTensor: one pair for the whole tensor.
- PerChannel(axis): one pair per index along `axis` (axis 0 = output channels of a weight).
- PerGroup(size): one pair per `size` consecutive weights of one output channel (e.g. 128 inputs).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..validate import UserError, check_choice


@dataclass(frozen=True)
class PerTensor:
    def reduce_dims(self, x: torch.Tensor) -> tuple[int, ...]:
        return tuple(range(x.dim()))


@dataclass(frozen=True)
class PerChannel:
    axis: int = 0

    def reduce_dims(self, x: torch.Tensor) -> tuple[int, ...]:
        axis = self.axis % x.dim()
        return tuple(d for d in range(x.dim()) if d != axis)


@dataclass(frozen=True)
class PerGroup:
    """Groups of `size` consecutive elements in each output channel's flattened row (in x kh x kw).

    A row whose length is not a multiple of `size` ends with a shorter group (zero-padded for the
    range computation, which includes 0 anyway).
    """

    size: int

    def __post_init__(self) -> None:
        if self.size < 1:
            raise UserError(f"group size={self.size} must be >= 1")

    def group(self, x: torch.Tensor) -> torch.Tensor:
        """(out, ...) -> (out, n_groups, size), zero-padded at the end of each row."""
        rows = x.reshape(x.shape[0], -1)
        pad = (-rows.shape[1]) % self.size
        if pad:
            rows = torch.nn.functional.pad(rows, (0, pad))
        return rows.reshape(rows.shape[0], -1, self.size)

    def ungroup(self, grouped: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        rows = grouped.reshape(grouped.shape[0], -1)[:, : like[0].numel()]
        return rows.reshape(like.shape)


Granularity = PerTensor | PerChannel | PerGroup


def granularity_to_meta(granularity: Granularity) -> dict:
    """JSON form: {"kind": "tensor"} | {"kind": "channel", "axis": a} | {"kind": "group", "size": n}."""
    if isinstance(granularity, PerChannel):
        return {"kind": "channel", "axis": granularity.axis}
    if isinstance(granularity, PerGroup):
        return {"kind": "group", "size": granularity.size}
    return {"kind": "tensor"}


def granularity_from_meta(meta: dict) -> Granularity:
    """Inverse of `granularity_to_meta` (a malformed entry raises ValueError naming it)."""
    kind = meta.get("kind") if isinstance(meta, dict) else None
    if kind == "channel":
        return PerChannel(int(meta.get("axis", 0)))
    if kind == "group":
        return PerGroup(int(meta["size"]))
    if kind == "tensor":
        return PerTensor()
    raise UserError(f"granularity {meta!r} is not tensor / channel / group")


def granularity_from_name(name: str, axis: int = 0, group_size: int = 128) -> Granularity:
    """'tensor' | 'channel' | 'group' -> the granularity object (CLI and YAML)."""
    check_choice("granularity", name, ("tensor", "channel", "group"))
    return {"tensor": PerTensor(), "channel": PerChannel(axis), "group": PerGroup(group_size)}[name]
