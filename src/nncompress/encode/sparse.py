"""Sparse storage of pruned weights ("How to efficiently store sparse weight matrix? CSR or CSC" in Yoo,
"Compressing Neural Networks: Pruning and Quantization", SNU 2023).

- CSR / CSC (Han 2015): values, column (row) indices and a row (column) pointer: 2a + n + 1 numbers
  for a non-zeros and n rows (columns).
- Relative indices (Han et al., ICLR 2016, fig. 2): each non-zero stores the distance to the
  previous one in a fixed number of bits; a gap wider than the largest code gets a filler zero
  (an explicit zero value) at the largest distance. The first distance counts from position 0.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class CompressedSparse:
    """CSR (`axis=0`: compressed rows) or CSC (`axis=1`: compressed columns) of a 2-D matrix."""

    values: np.ndarray
    indices: np.ndarray  # column index per value (CSR) or row index (CSC)
    pointer: np.ndarray  # length n + 1: where each row (column) starts in `values`
    shape: tuple[int, int]
    axis: int

    @property
    def storage_numbers(self) -> int:
        """2a + n + 1: values + indices + pointer entries."""
        return len(self.values) + len(self.indices) + len(self.pointer)

    def to_dense(self) -> np.ndarray:
        dense = np.zeros(self.shape, dtype=self.values.dtype)
        counts = np.diff(self.pointer)
        major = np.repeat(np.arange(len(counts)), counts)
        if self.axis == 0:
            dense[major, self.indices] = self.values
        else:
            dense[self.indices, major] = self.values
        return dense


def _compress(dense: np.ndarray, axis: int) -> CompressedSparse:
    if dense.ndim != 2:
        raise ValueError(f"CSR/CSC needs a 2-D matrix, got shape {dense.shape}; reshape conv weights to (out, -1)")
    view = dense if axis == 0 else dense.T
    major, minor = np.nonzero(view)  # row-major order of `view`
    pointer = np.zeros(view.shape[0] + 1, dtype=np.int64)
    np.cumsum(np.bincount(major, minlength=view.shape[0]), out=pointer[1:])
    return CompressedSparse(view[major, minor], minor.astype(np.int64), pointer, dense.shape, axis)


def to_csr(dense: np.ndarray) -> CompressedSparse:
    """Compressed sparse row form of a 2-D array."""
    return _compress(np.asarray(dense), 0)


def to_csc(dense: np.ndarray) -> CompressedSparse:
    """Compressed sparse column form of a 2-D array."""
    return _compress(np.asarray(dense), 1)


@dataclass(frozen=True)
class RelativeIndices:
    """Distances between stored entries (each < 2^index_bits) and their values (fillers are 0)."""

    distances: np.ndarray
    values: np.ndarray
    index_bits: int
    numel: int
    fillers: int

    def total_bits(self, value_bits: int) -> int:
        return len(self.distances) * (self.index_bits + value_bits)


def _filler_counts(gaps: np.ndarray, max_gap: int) -> np.ndarray:
    """Fillers needed before each entry: a gap g > max_gap takes (g - 1) // max_gap of them."""
    return np.where(gaps > max_gap, (gaps - 1) // max_gap, 0)


def encode_relative(flat: np.ndarray, index_bits: int) -> RelativeIndices:
    """Relative-index form of a flattened sparse tensor with `index_bits`-bit distances."""
    if not 1 <= index_bits <= 32:
        raise ValueError(f"index_bits={index_bits} must be in [1, 32]")
    flat = np.asarray(flat).ravel()
    positions = np.flatnonzero(flat)
    gaps = np.diff(positions, prepend=0)
    max_gap = (1 << index_bits) - 1
    n_fill = _filler_counts(gaps, max_gap)
    distances = np.full(len(positions) + int(n_fill.sum()), max_gap, dtype=np.int64)
    values = np.zeros(len(distances), dtype=flat.dtype)
    ends = np.cumsum(n_fill + 1) - 1  # where each real entry lands after its fillers
    distances[ends] = gaps - n_fill * max_gap
    values[ends] = flat[positions]
    return RelativeIndices(distances, values, index_bits, flat.size, int(n_fill.sum()))


def decode_relative(encoded: RelativeIndices) -> np.ndarray:
    """Rebuild the flat dense array from its relative-index form."""
    distances = np.asarray(encoded.distances)
    if distances.size and (distances[0] < 0 or distances[1:].min(initial=1) < 1):
        raise ValueError("relative indices: distances must be >= 1 (the first >= 0); a negative one would "
                         "wrap around to the tensor's end")
    positions = np.cumsum(distances)
    if len(positions) and positions[-1] >= encoded.numel:
        raise ValueError(f"relative indices point past the tensor end ({positions[-1]} >= {encoded.numel})")
    flat = np.zeros(encoded.numel, dtype=encoded.values.dtype)
    flat[positions] = encoded.values
    return flat


def relative_index_cost(flat: np.ndarray, index_bits: int, value_bits: int) -> dict:
    """Entries, fillers and total bits of the relative-index form at `index_bits`."""
    positions = np.flatnonzero(np.asarray(flat).ravel())
    max_gap = (1 << index_bits) - 1
    fillers = int(_filler_counts(np.diff(positions, prepend=0), max_gap).sum())
    entries = len(positions) + fillers
    return {"index_bits": index_bits, "entries": entries, "fillers": fillers,
            "filler_overhead": fillers / max(len(positions), 1), "bits": entries * (index_bits + value_bits)}


def best_index_bits(flat: np.ndarray, value_bits: int, candidates: range = range(1, 17)) -> dict:
    """The index width that minimises total bits (fillers counted), with its cost."""
    return min((relative_index_cost(flat, b, value_bits) for b in candidates), key=lambda c: (c["bits"], c["index_bits"]))
