"""Range asymmetric numeral systems (rANS; Duda, "Asymmetric numeral systems", 2013, arXiv:1311.2540;
the byte-wise coder of Giesen's ryg_rans) with a static frequency table: an arithmetic-class entropy
coder that spends -log2(f_s / M) bits on a symbol of frequency f_s out of M = 2^prob_bits, so a
stream costs sum_i -log2 p(s_i) bits plus at most about 4 bytes (the final state), whatever the
probabilities (Huffman spends at least one bit per symbol; at p(0) = 0.95 that is 3-4x the entropy).

Coder (state x in [L, 256 L), L = 2^23):
    encode s:  while x >= ((L >> prob_bits) << 8) f_s: emit x mod 256; x //= 256
               x = (x // f_s) M + (x mod f_s) + c_s          (c_s = f_0 + ... + f_{s-1})
    decode:    slot = x mod M; s = the symbol with c_s <= slot < c_s + f_s
               x = f_s (x // M) + slot - c_s; while x < L: x = 256 x + next byte
Symbols are encoded last to first so they decode first to last; the encoder starts from x = L and
the decoder must end there having read every byte (a free integrity check on top of the CRC).

The stream's work is bounded by what the caller checked: `rans_decode` runs exactly `length`
steps and refuses a table whose frequencies do not sum to M, a state that leaves [L, 256 L), a
stream that runs out of bytes or has bytes left. Pure Python: about 1-2 M symbols/s.
"""
from __future__ import annotations

import numpy as np

STATE_LOW = 1 << 23  # L: the state lives in [L, 256 L) between symbols
MAX_PROB_BITS = 16
MAX_ALPHABET = 1 << 14  # symbols of one table (prob_bits >= log2(alphabet) + 2 keeps every f >= 1)
# Symbols one payload byte may carry (a stream of 4 + k bytes holds at most 512 (4 + k) symbols): a
# hostile table whose one symbol takes (almost) all of M reads no byte per step, so without this bound
# a 4-byte stream could ask for 2^30 decoding steps. 512 per byte = 1/64 bit per symbol: a symbol with
# 99.9% of the mass still costs 1/700 bit, so writers check `fits_symbol_budget` and skip rANS.
MAX_SYMBOLS_PER_BYTE = 512


def quantize_freqs(counts: np.ndarray, prob_bits: int) -> np.ndarray:
    """Integer frequencies summing to exactly M = 2^prob_bits, proportional to `counts`, with
    f >= 1 wherever count > 0 and f = 0 where count = 0 (those symbols cannot be coded)."""
    counts = np.asarray(counts, dtype=np.int64)
    total, m = int(counts.sum()), 1 << prob_bits
    used = counts > 0
    if total == 0 or int(used.sum()) > m:
        raise ValueError(f"cannot give {int(used.sum())} used symbols a frequency out of 2^{prob_bits}")
    freq = np.where(used, np.maximum(1, np.round(counts * m / total)), 0).astype(np.int64)
    while (diff := m - int(freq.sum())) != 0:  # move the rounding error onto the largest frequencies
        order = np.argsort(-freq, kind="stable")
        step = 1 if diff > 0 else -1
        for i in order[: abs(diff)]:
            if freq[i] + step >= 1:
                freq[i] += step
    return freq


def ideal_bits(counts: np.ndarray, freq: np.ndarray, prob_bits: int) -> float:
    """sum_s count_s * -log2(f_s / M): the stream's information content under the table (the coder
    adds at most about 32 bits)."""
    counts, freq = np.asarray(counts, dtype=np.float64), np.asarray(freq, dtype=np.float64)
    used = counts > 0
    return float((counts[used] * (prob_bits - np.log2(freq[used]))).sum())


def rans_encode(symbols: np.ndarray, freq: np.ndarray, prob_bits: int) -> bytes:
    """Code symbols in [0, len(freq)) (each with freq > 0) into bytes."""
    freq_list = [int(f) for f in freq]
    cum = np.concatenate([[0], np.cumsum(freq_list)]).tolist()
    if cum[-1] != 1 << prob_bits:
        raise ValueError(f"frequencies sum to {cum[-1]}, not 2^{prob_bits}")
    values = np.asarray(symbols, dtype=np.int64).ravel()
    if values.size and (values.min() < 0 or values.max() >= len(freq_list) or min(freq_list[s] for s in set(values.tolist())) == 0):
        raise ValueError("a symbol lies outside the table or has frequency 0")
    x, out, shift = STATE_LOW, bytearray(), prob_bits
    bound = (STATE_LOW >> prob_bits) << 8
    for s in reversed(values.tolist()):
        f = freq_list[s]
        x_max = bound * f
        while x >= x_max:
            out.append(x & 0xFF)
            x >>= 8
        x = ((x // f) << shift) + (x % f) + cum[s]
    out += x.to_bytes(4, "little")
    out.reverse()
    return bytes(out)


def fits_symbol_budget(length: int, payload_len: int) -> bool:
    """Whether `length` symbols may be read from a `payload_len`-byte stream (MAX_SYMBOLS_PER_BYTE)."""
    return length <= MAX_SYMBOLS_PER_BYTE * payload_len


def rans_decode(payload: bytes, freq: list[int], prob_bits: int, length: int) -> np.ndarray:
    """Decode exactly `length` symbols; a corrupt stream raises ValueError. The work is bounded by the
    payload: at most MAX_SYMBOLS_PER_BYTE symbols per byte, and no symbol may hold all of 2^prob_bits."""
    m = 1 << prob_bits
    if sum(freq) != m or any(f < 0 for f in freq) or max(freq) >= m:
        raise ValueError(f"rANS table: frequencies must be non-negative, below 2^{prob_bits} each and sum to it")
    if not fits_symbol_budget(length, len(payload)):
        raise ValueError(f"rANS stream: {length} symbols from {len(payload)} bytes (at most {MAX_SYMBOLS_PER_BYTE} "
                         "symbols per byte)")
    if length == 0:
        if payload:
            raise ValueError("rANS stream: bytes for an empty stream")
        return np.zeros(0, dtype=np.int64)
    if len(payload) < 4:
        raise ValueError(f"rANS stream: {len(payload)} bytes cannot hold the 4-byte state")
    slot_symbol = np.repeat(np.arange(len(freq), dtype=np.int64), freq).tolist()
    cum = np.concatenate([[0], np.cumsum(freq)]).tolist()
    x, pos, end, mask = int.from_bytes(payload[:4], "big"), 4, len(payload), m - 1
    out = np.empty(length, dtype=np.int64)
    for i in range(length):
        slot = x & mask
        s = slot_symbol[slot]
        out[i] = s
        x = freq[s] * (x >> prob_bits) + slot - cum[s]
        while x < STATE_LOW:
            if pos >= end:
                raise ValueError(f"rANS stream runs out of bytes after {i + 1} of {length} symbols")
            x = (x << 8) | payload[pos]
            pos += 1
    if x != STATE_LOW or pos != end:
        raise ValueError("rANS stream is corrupt: it does not end in the initial state with every byte read")
    return out


__all__ = ["MAX_ALPHABET", "MAX_PROB_BITS", "MAX_SYMBOLS_PER_BYTE", "fits_symbol_budget", "ideal_bits", "quantize_freqs", "rans_decode",
           "rans_encode"]
