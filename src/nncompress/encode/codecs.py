"""Byte codecs of the `.nnc` 3.0 container: how one flat array of a transform's `Encoded` tensors
becomes bytes (docs/format.md, "Codecs"). The writer tries every codec that applies to the
array's dtype and keeps the smallest; the header records the codec and its parameters.

- raw: little-endian values; a float array MAY be stored in a narrower float type when that is
  lossless (float32 weights rounded to float16 take 2 bytes).
- packed: integers offset by the minimum, u = q - min in [0, 2^N - 1] with N = ceil(log2(max - min
  + 1)) (0..16; 0 when all are equal), N bits each, most-significant bit first: int4 codes take
  half a byte, a constant array none.
- huffman: canonical Huffman code of the integer symbols q - min (Han et al., ICLR 2016, sec. 4;
  `huffman.py`); the table in the header: `count[L]` codes of length L, and the symbols in code
  order (by length, ascending within a length, as DEFLATE) written as `deltas`: each symbol minus
  the previous one of the same length, the first of each length as is.
- relative: the True positions of a boolean array as Deep Compression relative indices (Han et al.
  2016, fig. 2): each kept position is its distance d in [1, 2^b - 1] to the previous one (the
  first counts from position -1); a gap wider than 2^b - 1 takes filler symbols 0, each advancing
  2^b - 1 positions. The symbol stream is Huffman-coded; b (2..12) minimises the coded bits.
- rans: the integer symbols q - min range-coded (rANS, `rans.py`) with a static table `freq` of
  frequencies summing to 2^prob_bits (the symbols' counts, quantized), so the stream costs
  sum -log2 p(q) bits + about 4 bytes: below one bit per symbol where Huffman cannot go. Tried only
  for arrays a transform marks as entropy-coded (`meta["entropy_coded"]`, e.g. the integer latents
  of entropy-penalized reparameterization), so every other array is stored as before.
- context: a boolean array of 2 or more dimensions (a keep mask) as a rows x cols matrix (rows =
  the first dimension), each bit range-coded with a probability learned from the bits before it:
  alive rows and columns first, then a product of row and column densities (`context_mask.py`).
  `by` = "columns" codes the transpose. Masks after pruning have dead rows and columns and
  columns of very different rates, which relative indices (about the i.i.d. entropy) cannot use.
  Tried for bool arrays when the writer is asked for context-coded masks (`mask_coding`).

Every decoder checks its parameters against the payload length before allocating anything and
raises ValueError naming what is wrong (the container adds where).
"""
from __future__ import annotations

import json
import math
import zlib

import numpy as np
import torch

from . import context_mask
from .huffman import HuffmanStream, huffman_decode, huffman_encode_sorted
from .rans import (MAX_ALPHABET, MAX_PROB_BITS, MAX_SYMBOLS_PER_BYTE, fits_symbol_budget, ideal_bits, quantize_freqs,
                   rans_decode, rans_encode)
from .sparse import RelativeIndices, decode_relative, encode_relative

#: dtype name in the header -> torch dtype (the logical dtype `decode` receives).
DTYPES = {"bool": torch.bool, "uint8": torch.uint8, "int8": torch.int8, "int16": torch.int16,
          "int32": torch.int32, "int64": torch.int64, "float8_e4m3fn": torch.float8_e4m3fn,
          "float8_e5m2": torch.float8_e5m2, "float16": torch.float16, "bfloat16": torch.bfloat16,
          "float32": torch.float32, "float64": torch.float64}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
FLOATS = tuple(name for name, t in DTYPES.items() if t.is_floating_point)
#: same-width integer views, for little-endian bytes of any dtype
_WORD = {1: (torch.uint8, "u1"), 2: (torch.int16, "<i2"), 4: (torch.int32, "<i4"), 8: (torch.int64, "<i8")}
MASK_CODINGS = ("relative", "context")  # a writer's choice for keep masks: Deep Compression's codecs, or also context
CODECS = ("raw", "packed", "huffman", "relative", "rans", "context")
PACKED_BITS = range(0, 17)  # 0 bits: every element equals `min`
INDEX_BIT_CHOICES = range(2, 13)
MAX_CODE_LENGTH = 31  # longest canonical Huffman code bitarray decodes


def itemsize(dtype: str) -> int:
    return DTYPES[dtype].itemsize


def int_range(dtype: str) -> tuple[int, int]:
    """[min, max] an integer (or bool) dtype holds."""
    if dtype == "bool":
        return 0, 1
    info = torch.iinfo(DTYPES[dtype])
    return info.min, info.max


def bits_for_range(lo: int, hi: int) -> int:
    """N = ceil(log2(hi - lo + 1)), at least 1: the bits that hold every integer in [lo, hi]."""
    return max(1, math.ceil(math.log2(hi - lo + 1)))


# --- raw ---------------------------------------------------------------------------------------

def bit_view(values: torch.Tensor) -> torch.Tensor:
    """The same bits as an integer tensor of the same width (compares floats bitwise, -0.0 != 0.0)."""
    return values.view(_WORD[values.element_size()][0])


def raw_bytes(values: torch.Tensor) -> bytes:
    """Little-endian bytes of a tensor in C order."""
    word, np_type = _WORD[values.element_size()]
    return np.ascontiguousarray(values.contiguous().view(word).numpy(), dtype=np_type).tobytes()


def from_raw(payload: bytes, dtype: str) -> torch.Tensor:
    """Inverse of `raw_bytes` (a copy in native byte order)."""
    flat = np.frombuffer(payload, dtype=_WORD[itemsize(dtype)][1])
    flat = flat.astype(flat.dtype.newbyteorder("="))
    if dtype == "bool" and flat.size and flat.max() > 1:
        raise ValueError("a raw bool array holds bytes other than 0 and 1")
    return torch.from_numpy(flat).view(DTYPES[dtype])


def narrowest_float(values: torch.Tensor) -> str:
    """The narrowest float type that stores `values` losslessly (bitwise); its own type at worst."""
    own = DTYPE_NAMES[values.dtype]
    for name in ("float16", "bfloat16", "float32"):
        narrow = DTYPES[name]
        if narrow.itemsize < values.element_size():
            if torch.equal(bit_view(values.to(narrow).to(values.dtype)), bit_view(values)):
                return name
    return own


# --- packed ------------------------------------------------------------------------------------

def pack(u: np.ndarray, bits: int) -> bytes:
    """Non-negative integers < 2^bits, `bits` bits each, most-significant first, zero-padded."""
    shifts = np.arange(bits - 1, -1, -1, dtype=np.uint32)
    planes = ((u.astype(np.uint32)[:, None] >> shifts) & 1).astype(np.uint8)
    return np.packbits(planes.ravel()).tobytes()


def unpack(payload: bytes, bits: int, count: int) -> np.ndarray:
    planes = np.unpackbits(np.frombuffer(payload, dtype=np.uint8))[: count * bits].reshape(count, bits)
    return planes.astype(np.int64) @ (1 << np.arange(bits - 1, -1, -1, dtype=np.int64))


# --- relative positions --------------------------------------------------------------------------

def relative_symbols(keep: np.ndarray, index_bits: int) -> np.ndarray:
    """The relative-index symbols of the True positions of `keep` (0 = filler), see the module doc."""
    shifted = np.concatenate([[0], np.asarray(keep, dtype=np.uint8).ravel()])  # first distance from -1
    rel = encode_relative(shifted, index_bits)
    return np.where(rel.values > 0, rel.distances, 0)


def relative_positions(symbols: np.ndarray, index_bits: int, count: int) -> np.ndarray:
    """Inverse of `relative_symbols`: a flat bool array of `count` elements."""
    max_gap = (1 << index_bits) - 1
    distances = np.where(symbols == 0, max_gap, symbols)
    kept = (symbols != 0).astype(np.uint8)
    flat = decode_relative(RelativeIndices(distances, kept, index_bits, count + 1, int((symbols == 0).sum())))
    return flat[1:].astype(bool)


# --- the writer's choice -------------------------------------------------------------------------

def to_deltas(count: list[int], symbols: list[int]) -> list[int]:
    """Symbols in code order -> differences to the previous symbol of the same code length."""
    out, first = [], 0
    for n in count:
        group = symbols[first : first + n]
        out += group[:1] + [b - a for a, b in zip(group, group[1:])]
        first += n
    return out


def from_deltas(count: list[int], deltas: list[int]) -> list[int]:
    """Inverse of `to_deltas`; a group that is not strictly ascending raises ValueError."""
    out, first = [], 0
    for n in count:
        group = list(np.cumsum(deltas[first : first + n], dtype=np.int64).tolist())
        if any(d == 0 for d in deltas[first + 1 : first + n]):
            raise ValueError("codec table: symbols of one code length must be strictly ascending")
        out += group
        first += n
    return out


def _huffman_params(stream: HuffmanStream, **extra: int) -> dict:
    return {**extra, "length": stream.length, "n_bits": stream.n_bits, "count": stream.count,
            "deltas": to_deltas(stream.count, stream.symbols)}


def _table_bytes(codec: dict) -> int:
    """About what a table adds to the zlib-compressed header (its own compressed size, less zlib's
    fixed 8 bytes)."""
    text = json.dumps([codec["count"], codec["deltas"]], separators=(",", ":")).encode()
    return max(len(zlib.compress(text, 9)) - 8, 0)


def _rans_candidate(q: np.ndarray, lo: int, hi: int) -> tuple[int, dict, bytes] | None:
    """The rANS codec at the table precision (prob_bits) that minimises stream + table bytes; None for
    a single-symbol array or one too skewed for the decoder's symbols-per-byte bound (MAX_SYMBOLS_PER_BYTE;
    the packed and Huffman codecs cover those)."""
    if hi - lo + 1 > MAX_ALPHABET or hi == lo:
        return None
    counts = np.bincount(q - lo, minlength=hi - lo + 1)
    best = None
    for prob_bits in range(max(2, math.ceil(math.log2(hi - lo + 1)) + 2), MAX_PROB_BITS + 1):
        freq = quantize_freqs(counts, prob_bits)
        codec = {"name": "rans", "min": lo, "length": int(q.size), "prob_bits": prob_bits, "freq": freq.tolist()}
        text = json.dumps(codec["freq"], separators=(",", ":")).encode()
        estimate = math.ceil(ideal_bits(counts, freq, prob_bits) / 8) + 4 + max(len(zlib.compress(text, 9)) - 8, 0)
        if best is None or estimate < best[0]:
            best = (estimate, codec, freq)
    estimate, codec, freq = best
    payload = rans_encode(q - lo, freq, codec["prob_bits"])
    return (estimate, codec, payload) if fits_symbol_budget(q.size, len(payload)) else None


def _context_candidate(keep: torch.Tensor) -> tuple[int, dict, bytes] | None:
    """The context codec of a bool array of 2+ dimensions in its better orientation that fits the
    decoder's work bound (estimate: the stream plus its header entry's values, compressed); None where
    it does not apply or neither orientation fits."""
    shape = context_mask.matrix_shape(tuple(keep.shape))
    if shape is None:
        return None
    matrix = keep.reshape(shape).numpy()
    for by, _ in context_mask.orientations(matrix):
        payload = context_mask.encode_mask(matrix, by)
        if context_mask.fits(*shape, len(payload)):
            codec = {"name": "context", "rows": shape[0], "cols": shape[1], "by": by}
            entry = json.dumps([shape[0], shape[1], by], separators=(",", ":")).encode()
            return len(payload) + max(len(zlib.compress(entry, 9)) - 8, 0), codec, payload
    return None


def candidates(values: torch.Tensor, entropy: bool = False) -> list[tuple[int, dict, bytes]]:
    """(estimated bytes, codec, payload) of every codec that applies to the array `values`, stored
    flat (`entropy`: also the adaptive coders: rANS for integer arrays a transform marks as
    entropy-coded, the context codec for keep masks of 2+ dimensions, which uses their shape)."""
    shaped, values = values, values.flatten()
    dtype = DTYPE_NAMES[values.dtype]
    if values.is_floating_point():
        stored = narrowest_float(values)
        codec = {"name": "raw", "as": stored} if stored != dtype else {"name": "raw"}
        return [(values.numel() * itemsize(stored), codec, raw_bytes(values.to(DTYPES[stored])))]
    out = [(values.numel() * itemsize(dtype), {"name": "raw"}, raw_bytes(values))]
    if values.numel() == 0:
        return out
    q = values.to(torch.int64).numpy()
    lo, hi = int(q.min()), int(q.max())
    bits = bits_for_range(lo, hi) if hi > lo else 0
    if bits in PACKED_BITS:
        payload = pack(q - lo, bits)
        out.append((len(payload) + 2, {"name": "packed", "bits": bits, "min": lo, "length": q.size}, payload))
    if dtype == "bool":
        for index_bits in INDEX_BIT_CHOICES:
            stream = huffman_encode_sorted(relative_symbols(q, index_bits))
            codec = {"name": "relative", **_huffman_params(stream, index_bits=index_bits)}
            out.append((len(stream.payload) + _table_bytes(codec), codec, stream.payload))
        if entropy and hi > lo and (context := _context_candidate(shaped)) is not None:
            out.append(context)
    elif hi - lo < 1 << 16:
        stream = huffman_encode_sorted(q - lo)
        codec = {"name": "huffman", **_huffman_params(stream, min=lo)}
        out.append((len(stream.payload) + _table_bytes(codec), codec, stream.payload))
    if entropy and dtype != "bool" and (rans := _rans_candidate(q, lo, hi)) is not None:
        out.append(rans)
    return out


def encode(values: torch.Tensor, entropy: bool = False) -> tuple[dict, bytes]:
    """The smallest (codec, payload) for a flat array (ties: the simpler codec, listed first)."""
    _, codec, payload = min(candidates(values.detach().cpu(), entropy), key=lambda c: c[0])
    return codec, payload


# --- checks and decoding ------------------------------------------------------------------------

def _int(codec: dict, key: str, lo: int, hi: int) -> int:
    value = codec.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise ValueError(f"codec {codec.get('name')!r}: {key}={value!r} is not an integer in [{lo}, {hi}]")
    return value


def _int_list(codec: dict, key: str, max_len: int, hi: int) -> list[int]:
    value = codec.get(key)
    if not isinstance(value, list) or len(value) > max_len or not all(
            isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= hi for v in value):
        raise ValueError(f"codec {codec.get('name')!r}: {key} must be a list of at most {max_len} integers in [0, {hi}]")
    return value


def _check_huffman(codec: dict, payload_len: int, max_symbol: int) -> int:
    """Check a Huffman table and stream against the payload; returns the stream length. Every
    symbol takes at least one bit, so length <= n_bits <= 8 * payload bytes bounds the output."""
    n_bits = _int(codec, "n_bits", 0, 8 * payload_len)
    if payload_len != math.ceil(n_bits / 8):
        raise ValueError(f"codec {codec['name']!r}: {payload_len} payload bytes for {n_bits} bits")
    length = _int(codec, "length", 0, n_bits)
    count = _int_list(codec, "count", MAX_CODE_LENGTH + 1, length + 1)
    deltas = _int_list(codec, "deltas", length + 1 if length else 0, max_symbol)
    if sum(count) != len(deltas):
        raise ValueError(f"codec {codec['name']!r}: the table lists {len(deltas)} symbols for {sum(count)} codes")
    if any(s > max_symbol for s in from_deltas(count, deltas)):
        raise ValueError(f"codec {codec['name']!r}: a table symbol exceeds {max_symbol}")
    return length


def check(codec: dict, dtype: str, payload_len: int, numel: int, sparse: bool = False) -> int:
    """Validate a codec entry against its payload length, before anything is allocated; returns
    the number of elements it decodes to: `numel` for a dense array, at most `numel` for a sparse
    one (its kept elements)."""
    if not isinstance(codec, dict) or codec.get("name") not in CODECS:
        raise ValueError(f"unknown codec {str(codec)[:80]} ({', '.join(CODECS)})")
    name, floating = codec["name"], dtype in FLOATS
    if name == "raw":
        stored = codec.get("as", dtype)
        if stored != dtype and not (floating and stored in FLOATS):
            raise ValueError(f"a {dtype} array cannot be stored raw as {stored!r}")
        if payload_len % itemsize(stored):
            raise ValueError(f"{payload_len} bytes are not a whole number of {stored}")
        n = payload_len // itemsize(stored)
    elif floating or (name in ("relative", "context") and dtype != "bool") or (name in ("huffman", "rans") and dtype == "bool"):
        raise ValueError(f"codec {name!r} does not apply to {dtype} arrays")
    elif name == "packed":
        bits = _int(codec, "bits", PACKED_BITS.start, PACKED_BITS.stop - 1)
        lo, hi = int_range(dtype)
        _int(codec, "min", lo, hi)
        n = _int(codec, "length", 0, numel)
        if payload_len != math.ceil(n * bits / 8):
            raise ValueError(f"{payload_len} bytes do not hold exactly {n} codes of {bits} bits")
    elif name == "rans":
        n = _check_rans(codec, dtype, payload_len, numel)
    elif name == "context":
        n = _check_context(codec, payload_len, numel, sparse)
    elif name == "huffman":
        lo, hi = int_range(dtype)
        low = _int(codec, "min", lo, hi)
        n = _check_huffman(codec, payload_len, hi - low + 1)  # + 1: the unused symbol of a one-symbol table
    else:
        index_bits = _int(codec, "index_bits", 1, 16)
        if _check_huffman(codec, payload_len, 1 << index_bits) > numel:  # every entry advances >= 1 position
            raise ValueError(f"codec 'relative': {codec['length']} entries for {numel} positions")
        if sparse:
            raise ValueError("a relative-coded array cannot be sparse")
        n = numel
    if n > numel or (n != numel and not sparse):
        raise ValueError(f"codec {name!r} holds {n} elements, the shape has {numel}")
    return n


def _check_rans(codec: dict, dtype: str, payload_len: int, numel: int) -> int:
    """Check a rANS entry: the table sums to 2^prob_bits and fits the dtype from `min`; `length`
    (the decoder's steps) is at most the array's declared elements; an empty stream has no bytes,
    any other holds at least the 4-byte state. Returns `length`."""
    prob_bits = _int(codec, "prob_bits", 1, MAX_PROB_BITS)
    freq = _int_list(codec, "freq", MAX_ALPHABET, 1 << prob_bits)
    lo, hi = int_range(dtype)
    low = _int(codec, "min", lo, hi)
    if not freq or low + len(freq) - 1 > hi or sum(freq) != 1 << prob_bits:
        raise ValueError(f"codec 'rans': freq must list 1..{MAX_ALPHABET} frequencies summing to 2^{prob_bits} "
                         f"(these sum to {sum(freq)}) for symbols from min={low} up to the {dtype} maximum {hi}")
    if max(freq) >= 1 << prob_bits:
        raise ValueError(f"codec 'rans': a symbol holds the whole table (frequency {max(freq)} of 2^{prob_bits}); "
                         "a stream then reads no bytes")
    length = _int(codec, "length", 0, numel)
    if (length == 0) != (payload_len == 0) or 0 < payload_len < 4:
        raise ValueError(f"codec 'rans': {payload_len} payload bytes for {length} symbols (a stream holds a 4-byte state)")
    if not fits_symbol_budget(length, payload_len):
        raise ValueError(f"codec 'rans': {length} symbols from {payload_len} payload bytes (at most "
                         f"{MAX_SYMBOLS_PER_BYTE} symbols per byte)")
    return length


def _check_context(codec: dict, payload_len: int, numel: int, sparse: bool) -> int:
    """Check a context entry: rows x cols is the array, the orientation is known, the stream holds
    the state and stays within the symbols-per-byte bound (`context_mask.fits`). Returns the count."""
    rows = _int(codec, "rows", 1, numel)
    cols = _int(codec, "cols", 0, numel)
    if sparse or rows * cols != numel:
        raise ValueError(f"codec 'context': {rows} x {cols} is not the {numel}-element dense array")
    if codec.get("by") not in context_mask.ORIENTATIONS:
        raise ValueError(f"codec 'context': by={codec.get('by')!r} is not one of {context_mask.ORIENTATIONS}")
    if payload_len < 4 or not context_mask.fits(rows, cols, payload_len):
        raise ValueError(f"codec 'context': a {rows} x {cols} mask from {payload_len} bytes (a stream holds a 4-byte "
                         f"state and at most {MAX_SYMBOLS_PER_BYTE} symbols per byte)")
    return numel


def _stream(codec: dict, payload: bytes) -> np.ndarray:
    symbols = from_deltas(codec["count"], codec["deltas"])
    return huffman_decode(HuffmanStream(codec["count"], symbols, codec["length"], codec["n_bits"], payload))


def decode(codec: dict, payload: bytes, dtype: str, count: int) -> torch.Tensor:
    """The flat array of `count` elements (dtype `dtype`) a `check`ed codec entry stores."""
    name = codec["name"]
    if name == "raw":
        return from_raw(payload, codec.get("as", dtype)).to(DTYPES[dtype])
    if name == "relative":
        symbols = _stream(codec, payload)
        if symbols.size and symbols.max() >= 1 << codec["index_bits"]:
            raise ValueError(f"codec 'relative': a distance exceeds {codec['index_bits']} bits")
        return torch.from_numpy(relative_positions(symbols, codec["index_bits"], count))
    if name == "context":
        return torch.from_numpy(context_mask.decode_mask(payload, codec["rows"], codec["cols"], codec["by"]).ravel())
    if name == "rans":
        q = rans_decode(payload, codec["freq"], codec["prob_bits"], count)
    else:
        q = unpack(payload, codec["bits"], count) if name == "packed" else _stream(codec, payload)
    q = q + codec["min"]
    lo, hi = int_range(dtype)
    if q.size and (q.min() < lo or q.max() > hi):
        raise ValueError(f"codec {name!r}: values outside the {dtype} range [{lo}, {hi}]")
    return torch.from_numpy(q).to(DTYPES[dtype])
