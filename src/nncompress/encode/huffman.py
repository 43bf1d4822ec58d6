"""Canonical Huffman coding of integer symbol streams (Deep Compression's last stage, Han et al. ICLR 2016;
"Huffman coding of bin indices and non-zero weight indices" in Yoo, "Compressing Neural Networks: Pruning and
Quantization", SNU 2023: frequent symbols get short codes, average length sum_i p_i l_i close to the entropy
-sum_i p_i log2 p_i), built on `bitarray`'s well-tested coder rather than a hand-rolled bit writer.

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


def canonical_code(count: list[int], symbols: list[int]) -> dict[int, bitarray]:
    """The canonical code of a table: codes of each length L are consecutive integers, starting at
    (first code of length L - 1 + count[L - 1]) << 1, assigned to `symbols` in order (as DEFLATE)."""
    code, first, out = 0, 0, {}
    for length, n in enumerate(count):
        for symbol in symbols[first : first + n]:
            out[symbol] = bitarray(format(code, f"0{length}b"), endian="big")
            code += 1
        first += n
        code <<= 1
    return out


def huffman_encode_sorted(values: np.ndarray) -> HuffmanStream:
    """Like `huffman_encode`, with the symbols of each code length in ascending order (the DEFLATE
    convention, RFC 1951 sec. 3.2.2): same code lengths and stream size, but a table whose symbols
    can be stored as small differences."""
    stream = huffman_encode(values)
    if stream.length == 0:
        return stream
    groups, first = [], 0
    for n in stream.count:
        groups.append(sorted(stream.symbols[first : first + n]))
        first += n
    symbols = [s for group in groups for s in group]
    bits = bitarray(endian="big")
    bits.encode(canonical_code(stream.count, symbols), np.asarray(values).ravel().tolist())
    return HuffmanStream(stream.count, symbols, stream.length, len(bits), bits.tobytes())


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


__all__ = ["HuffmanStream", "canonical_code", "entropy_bits", "huffman_decode", "huffman_encode", "huffman_encode_sorted"]
