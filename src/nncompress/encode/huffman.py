"""Canonical Huffman coding of integer symbol streams (Deep Compression's last stage; seed 000
"Huffman coding"), built on `bitarray`'s well-tested coder rather than a hand-rolled bit writer.

A canonical code is fully described by how many codes have each length (`count`) and the symbols
in code order (`symbols`), so the table stored in a file is tiny.
"""
from __future__ import annotations

import collections
from dataclasses import dataclass

import numpy as np
from bitarray import bitarray
from bitarray.util import canonical_decode, canonical_huffman


@dataclass(frozen=True)
class HuffmanStream:
    """An encoded stream: the canonical table, the number of symbols and the packed bits."""

    count: list[int]
    symbols: list[int]
    length: int
    n_bits: int
    payload: bytes

    @property
    def bits_per_symbol(self) -> float:
        return self.n_bits / self.length if self.length else 0.0


def huffman_encode(values: np.ndarray) -> HuffmanStream:
    """Huffman-code a 1-D array of non-negative integers."""
    values = np.asarray(values).ravel()
    if values.size == 0:
        return HuffmanStream([], [], 0, 0, b"")
    if values.min() < 0:
        raise ValueError("Huffman symbols must be non-negative integers")
    symbols = values.tolist()
    freq = collections.Counter(symbols)
    if len(freq) == 1:  # a one-symbol alphabet still needs one bit per symbol to be decodable
        freq[max(freq) + 1] = 0
    code, count, order = canonical_huffman(freq)
    bits = bitarray(endian="big")
    bits.encode(code, symbols)
    return HuffmanStream(list(count), list(order), len(symbols), len(bits), bits.tobytes())


def huffman_decode(stream: HuffmanStream) -> np.ndarray:
    """Decode exactly `stream.length` symbols; a stream that runs short or is corrupt raises ValueError."""
    if stream.length == 0:
        return np.zeros(0, dtype=np.int64)
    if sum(stream.count) != len(stream.symbols) or len(stream.payload) * 8 < stream.n_bits:
        raise ValueError("Huffman table and payload do not match")
    bits = bitarray(endian="big")
    bits.frombytes(stream.payload)
    del bits[stream.n_bits :]
    try:
        out = np.fromiter(canonical_decode(bits, stream.count, stream.symbols), dtype=np.int64)
    except (ValueError, TypeError) as err:
        raise ValueError(f"corrupt Huffman stream: {err}") from err
    if out.size != stream.length:
        raise ValueError(f"Huffman stream decodes to {out.size} symbols, expected {stream.length}")
    return out


def entropy_bits(values: np.ndarray) -> float:
    """Shannon entropy of the stream's symbol distribution, in bits per symbol."""
    values = np.asarray(values).ravel()
    if values.size == 0:
        return 0.0
    _, counts = np.unique(values, return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum()) if len(p) > 1 else 0.0


__all__ = ["HuffmanStream", "entropy_bits", "huffman_decode", "huffman_encode"]
