"""Context-modelled coding of pruning masks: the `context` codec of `.nnc` 3.2 (docs/format.md).

Deep Compression stores a mask as relative indices (Han et al., ICLR 2016, fig. 2), which cost
about the entropy H(d) of an i.i.d. mask of density d. Masks after magnitude pruning and retraining
are far from i.i.d.: whole rows die (neurons nobody feeds), whole columns die (inputs nobody reads:
MNIST's border pixels, the outputs of dead neurons), and the surviving columns keep very different
rates. Coding each bit with a probability learned from the bits already coded (adaptive arithmetic
coding with a context model, as in CABAC or JBIG; here with the binary rANS of `rans.py`) captures
that without any side table.

A keep mask is viewed as a rows x cols matrix (rows = shape[0]: output channels / neurons;
`by="columns"` codes its transpose). The model, in integer arithmetic so that every reader
computes the same probabilities (P = probability of a 1, out of M = 2^15, clamped to [1, M - 1]):

1. alive rows (any True), then alive columns: one bit each, p = (n1 + 1) / (n + 2) (Laplace's rule
   over the bits of that list so far); when no row is alive no column is coded.
2. the alive rows x alive columns, row by row. Before row t (of the alive rows):
   column rate  q_j = (c_j + 1) / (t + 2)        c_j: ones of column j in rows 0..t-1
   global scale g   = (T + 1) / (E + 1)          T: ones so far, E: sum of q over the cells so far
   and within the row, at each cell, with o ones and e = sum of q over the row's cells so far:
   row scale   rho = (o + W g) / (e + W)         W = 4: the prior weight of g, in expected ones
   p = rho q_j: the column's rate, scaled by how dense this row has turned out (a product model
   of row and column densities, learned online).
   In fixed point (S = 2^16, floor divisions): Q_j = S (c_j + 1) // (t + 2);
   G = min(S^2 (T + 1) // (E + S), R) with E the sum of Q; rho = min(S (o S + W G) // (e + W S), R)
   with e the row's sum of Q, R = 2^24; P = clamp((rho Q_j) >> (32 - 15), 1, M - 1).

The cost per cell, -log2 p(bit), is computed for a whole row at once on the writer's side (the row's
bits are known: `o` and `e` are prefix sums); the reader must decode bit by bit (pure Python, about
1 us per cell of the alive block). Its work is bounded like the `rans` codec's: at most
MAX_SYMBOLS_PER_BYTE symbols per payload byte, counting every cell, every alive bit and 64 more per
row and column (`work`), checked first; the decoder holds at most CHUNK column rates as Python ints.
"""
from __future__ import annotations

import math

import numpy as np

from .rans import MAX_SYMBOLS_PER_BYTE, STATE_LOW

PROB_BITS = 15
M = 1 << PROB_BITS
FIXED = 16  # S = 2^16: column rates and scales in fixed point
S = 1 << FIXED
PRIOR_WEIGHT = 4  # W
SCALE_MAX = 1 << 24  # R: the largest row / global scale (256 in real terms)
SHIFT = 2 * FIXED - PROB_BITS
MAX_COLS = 1 << 24  # longest coded row (keeps every product below 2^63)
ROW_COST = 64  # symbols a row or column is charged for its own work (numpy calls per row) in the bound
CHUNK = 4096  # cells whose column rates the decoder holds as Python ints at once
ORIENTATIONS = ("rows", "columns")


def work(rows: int, cols: int) -> int:
    """The decoder's work in symbols: every cell, the alive bits, and ROW_COST per row and column."""
    return rows * cols + (1 + ROW_COST) * (rows + cols)


def fits(rows: int, cols: int, payload_len: int) -> bool:
    """Whether a `rows` x `cols` mask may be decoded from `payload_len` bytes (the work bound)."""
    return max(rows, cols) <= MAX_COLS and work(rows, cols) <= MAX_SYMBOLS_PER_BYTE * payload_len


def _clamp(p: np.ndarray) -> np.ndarray:
    return np.clip(p, 1, M - 1)


def _laplace(bits: np.ndarray) -> np.ndarray:
    """P(1) of each bit of a list under Laplace's rule on the bits before it."""
    n = np.arange(bits.size, dtype=np.int64)
    ones = np.cumsum(bits, dtype=np.int64) - bits
    return _clamp(M * (ones + 1) // (n + 2))


def _body_probabilities(block: np.ndarray) -> np.ndarray:
    """P(1) of every cell of the alive block (row-major), as the reader computes them one by one."""
    rows, cols = block.shape
    out = np.empty((rows, cols), dtype=np.int64)
    counts = np.zeros(cols, dtype=np.int64)
    ones_total, expected_total = 0, 0
    for t in range(rows):
        x = block[t].astype(np.int64)
        q = S * (counts + 1) // (t + 2)
        g = min(S * S * (ones_total + 1) // (expected_total + S), SCALE_MAX)
        o = np.cumsum(x) - x
        e = np.cumsum(q) - q
        rho = np.minimum(S * (o * S + PRIOR_WEIGHT * g) // (e + PRIOR_WEIGHT * S), SCALE_MAX)
        out[t] = _clamp((rho * q) >> SHIFT)
        counts += x
        ones_total += int(x.sum())
        expected_total += int(q.sum())
    return out


def _symbols(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(bits, P(1) of each) in coding order for a 2-D bool mask."""
    alive_rows, alive_cols = mask.any(1), mask.any(0)
    parts = [(alive_rows, _laplace(alive_rows))]
    if alive_rows.any():
        block = mask[alive_rows][:, alive_cols]
        parts += [(alive_cols, _laplace(alive_cols)), (block.ravel(), _body_probabilities(block).ravel())]
    bits = np.concatenate([b.astype(np.int64) for b, _ in parts])
    return bits, np.concatenate([p for _, p in parts])


def ideal_bytes(mask: np.ndarray) -> float:
    """sum of -log2 p(bit) over the coded bits, in bytes (the coder adds at most about 4)."""
    bits, p1 = _symbols(mask)
    p = np.where(bits == 1, p1, M - p1)
    return float((PROB_BITS - np.log2(p)).sum() / 8)


def _oriented(mask: np.ndarray, by: str) -> np.ndarray:
    return mask if by == "rows" else mask.T


def orientations(mask: np.ndarray) -> list[tuple[str, float]]:
    """("rows" / "columns", coded size in bytes) for both orientations, the smaller first."""
    return sorted(((by, ideal_bytes(_oriented(mask, by))) for by in ORIENTATIONS), key=lambda c: c[1])


def best_orientation(mask: np.ndarray) -> tuple[str, float]:
    """The orientation whose coded size is smaller, and that size in bytes."""
    return orientations(mask)[0]


def encode_mask(mask: np.ndarray, by: str = "rows") -> bytes:
    """The rANS stream of a 2-D bool mask (symbols coded last to first, as `rans.rans_encode`)."""
    bits, p1 = _symbols(_oriented(np.asarray(mask, dtype=bool), by))
    x, out = STATE_LOW, bytearray()
    bound = (STATE_LOW >> PROB_BITS) << 8
    for bit, p in zip(reversed(bits.tolist()), reversed(p1.tolist())):
        f, c = (p, 0) if bit else (M - p, p)
        x_max = bound * f
        while x >= x_max:
            out.append(x & 0xFF)
            x >>= 8
        x = ((x // f) << PROB_BITS) + (x % f) + c
    out += x.to_bytes(4, "little")
    out.reverse()
    return bytes(out)


class _BitReader:
    """The binary rANS decoder: `bit(p1)` reads one symbol of probability p1 / M of being 1."""

    def __init__(self, payload: bytes):
        if len(payload) < 4:
            raise ValueError(f"codec 'context': {len(payload)} bytes cannot hold the 4-byte state")
        self.payload, self.x, self.pos = payload, int.from_bytes(payload[:4], "big"), 4

    def bit(self, p1: int) -> int:
        x = self.x
        slot = x & (M - 1)
        if slot < p1:
            x, bit = p1 * (x >> PROB_BITS) + slot, 1
        else:
            x, bit = (M - p1) * (x >> PROB_BITS) + slot - p1, 0
        while x < STATE_LOW:
            if self.pos >= len(self.payload):
                raise ValueError("codec 'context': the stream runs out of bytes")
            x = (x << 8) | self.payload[self.pos]
            self.pos += 1
        self.x = x
        return bit

    def laplace(self, n: int) -> np.ndarray:
        out, ones = np.zeros(n, dtype=bool), 0
        for i in range(n):
            if self.bit(min(max(M * (ones + 1) // (i + 2), 1), M - 1)):
                out[i], ones = True, ones + 1
        return out

    def finish(self) -> None:
        if self.x != STATE_LOW or self.pos != len(self.payload):
            raise ValueError("codec 'context': the stream is corrupt (it does not end in the initial state "
                             "with every byte read)")


def _decode_body(reader: _BitReader, rows: int, cols: int) -> np.ndarray:
    block = np.zeros((rows, cols), dtype=bool)
    counts = np.zeros(cols, dtype=np.int64)
    ones_total, expected_total = 0, 0
    bit, weight_s = reader.bit, PRIOR_WEIGHT * S
    for t in range(rows):
        q_row = S * (counts + 1) // (t + 2)
        g = min(S * S * (ones_total + 1) // (expected_total + S), SCALE_MAX)
        o, e, prior, row = 0, 0, PRIOR_WEIGHT * g, block[t]
        for start in range(0, cols, CHUNK):
            for j, q in enumerate(q_row[start : start + CHUNK].tolist(), start):
                rho = min(S * (o * S + prior) // (e + weight_s), SCALE_MAX)
                p = (rho * q) >> SHIFT
                if bit(1 if p < 1 else (M - 1 if p >= M else p)):
                    o += 1
                    row[j] = True
                e += q
        counts += row
        ones_total += o
        expected_total += e
    return block


def decode_mask(payload: bytes, rows: int, cols: int, by: str = "rows") -> np.ndarray:
    """The rows x cols bool mask a `context` stream holds (a corrupt stream raises ValueError)."""
    if not fits(rows, cols, len(payload)):
        raise ValueError(f"codec 'context': a {rows} x {cols} mask from {len(payload)} bytes exceeds the "
                         f"{MAX_SYMBOLS_PER_BYTE} symbols per byte bound")
    n_rows, n_cols = (rows, cols) if by == "rows" else (cols, rows)
    reader = _BitReader(payload)
    alive_rows = reader.laplace(n_rows)
    mask = np.zeros((n_rows, n_cols), dtype=bool)
    if alive_rows.any():
        alive_cols = reader.laplace(n_cols)
        mask[np.ix_(alive_rows, alive_cols)] = _decode_body(reader, int(alive_rows.sum()), int(alive_cols.sum()))
    reader.finish()
    return mask if by == "rows" else mask.T


def matrix_shape(shape: tuple[int, ...]) -> tuple[int, int] | None:
    """(rows, cols) a mask of this shape is coded as, or None for fewer than 2 dimensions."""
    if len(shape) < 2 or shape[0] == 0:
        return None
    return shape[0], math.prod(shape[1:])


__all__ = ["ORIENTATIONS", "best_orientation", "decode_mask", "encode_mask", "fits", "ideal_bytes", "matrix_shape",
           "orientations", "work"]
