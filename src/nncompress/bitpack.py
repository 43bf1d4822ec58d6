"""Bit packing of small integers: N-bit codes (1..7 bits) stored N bits each in uint8 bytes.

Codes are offset by the range's minimum, so q in [lo, hi] becomes u = q - lo in [0, 2^N - 1] with
N = ceil(log2(hi - lo + 1)); the bits of consecutive codes are written most-significant first
(code 0 occupies the top N bits of byte 0). This is how int4 weights take half a byte and a
pruning mask one bit per weight.
"""
from __future__ import annotations

import math

import torch


def bits_for_range(lo: int, hi: int) -> int:
    """Bits that hold every integer in [lo, hi]: ceil(log2(hi - lo + 1)), at least 1."""
    if hi < lo:
        raise ValueError(f"empty integer range [{lo}, {hi}]")
    return max(1, math.ceil(math.log2(hi - lo + 1)))


def pack_bits(codes: torch.Tensor, lo: int, bits: int) -> torch.Tensor:
    """Flat uint8 bytes holding (codes - lo) in `bits` bits each, MSB first (last byte zero-padded)."""
    u = (codes.flatten().to(torch.int64) - lo)
    if u.numel() and (u.min() < 0 or u.max() >= 1 << bits):
        raise ValueError(f"codes outside [{lo}, {lo + (1 << bits) - 1}] cannot be packed in {bits} bits")
    shifts = torch.arange(bits - 1, -1, -1, dtype=torch.int64)
    bit_stream = ((u.unsqueeze(1) >> shifts) & 1).flatten()
    pad = (-bit_stream.numel()) % 8
    bit_stream = torch.nn.functional.pad(bit_stream, (0, pad)).view(-1, 8)
    weights = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.int64)
    return (bit_stream * weights).sum(1).to(torch.uint8)


def unpack_bits(packed: torch.Tensor, lo: int, bits: int, numel: int) -> torch.Tensor:
    """Inverse of `pack_bits`: `numel` int64 codes."""
    if packed.numel() * 8 < numel * bits:
        raise ValueError(f"{packed.numel()} bytes cannot hold {numel} codes of {bits} bits")
    bit_stream = ((packed.to(torch.int64).unsqueeze(1) >> torch.arange(7, -1, -1)) & 1).flatten()
    bit_stream = bit_stream[: numel * bits].view(numel, bits)
    weights = 1 << torch.arange(bits - 1, -1, -1, dtype=torch.int64)
    return (bit_stream * weights).sum(1) + lo
