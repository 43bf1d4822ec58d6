"""Writer and reader of the `.nnc` container (the byte layout is specified in docs/format.md).

`write_nnc` takes already-encoded layers (see `deep_compression.py`) and raw tensors; `read_nnc`
validates everything (magic, version, CRCs, bounds, overlaps, stream lengths) before returning
plain numpy arrays, so a truncated, bit-flipped or hostile file raises `NncFormatError`.
"""
from __future__ import annotations

import json
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..fileio import atomic_write_bytes
from .huffman import HuffmanStream

MAGIC = b"NNC\x01"
VERSION = (2, 0)
READABLE_MAJORS = (1, 2)  # 1.x: the header is JSON; 2.x: the header is zlib-compressed JSON
PREAMBLE = struct.Struct("<4sHHII")
DTYPES = {"float32": "<f4", "float16": "<f2"}
MAX_HEADER = 64 << 20  # bytes of header JSON a reader accepts (after decompression)


class NncFormatError(ValueError):
    """The file is not a valid .nnc file (the message says what is wrong)."""


@dataclass
class EncodedLayer:
    """One weight layer in Deep Compression form."""

    name: str
    shape: tuple[int, ...]
    index_bits: int
    n_fillers: int
    codebook: np.ndarray
    index: HuffmanStream
    clusters: HuffmanStream


@dataclass
class NncModel:
    model: dict
    layers: list[EncodedLayer] = field(default_factory=list)
    tensors: dict[str, np.ndarray] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)


def _stream_header(stream: HuffmanStream, section: str) -> dict:
    return {"section": section, "count": stream.count, "symbols": stream.symbols,
            "length": stream.length, "n_bits": stream.n_bits}


def serialize(nnc: NncModel) -> bytes:
    """The bytes of a .nnc file."""
    blobs: list[tuple[str, bytes]] = []
    layers = []
    for layer in nnc.layers:
        codebook_dtype = "float16" if layer.codebook.dtype == np.float16 else "float32"
        blobs += [(f"{layer.name}.index", layer.index.payload), (f"{layer.name}.clusters", layer.clusters.payload),
                  (f"{layer.name}.codebook", np.asarray(layer.codebook, dtype=DTYPES[codebook_dtype]).tobytes())]
        layers.append({"name": layer.name, "shape": list(layer.shape), "index_bits": layer.index_bits,
                       "n_entries": layer.index.length, "n_fillers": layer.n_fillers, "codebook": f"{layer.name}.codebook",
                       "codebook_dtype": codebook_dtype,
                       "index": _stream_header(layer.index, f"{layer.name}.index"),
                       "clusters": _stream_header(layer.clusters, f"{layer.name}.clusters")})
    tensors = []
    for name, array in nnc.tensors.items():
        dtype = "float16" if array.dtype == np.float16 else "float32"
        blobs.append((name, np.ascontiguousarray(array, dtype=DTYPES[dtype]).tobytes()))
        tensors.append({"name": name, "dtype": dtype, "shape": list(array.shape), "section": name})
    sections, offset = [], 0
    for name, blob in blobs:
        sections.append({"name": name, "offset": offset, "length": len(blob), "crc32": zlib.crc32(blob)})
        offset += len(blob)
    header = zlib.compress(json.dumps({"model": nnc.model, "sections": sections, "layers": layers,
                                       "tensors": tensors, "meta": nnc.meta}, separators=(",", ":")).encode(), 9)
    return PREAMBLE.pack(MAGIC, *VERSION, len(header), zlib.crc32(header)) + header + b"".join(b for _, b in blobs)


def write_nnc(path: str | os.PathLike, nnc: NncModel) -> int:
    """Write atomically; returns the file size in bytes."""
    data = serialize(nnc)
    atomic_write_bytes(path, data)
    return len(data)


def _fail(what: str) -> NncFormatError:
    return NncFormatError(f"not a valid .nnc file: {what}")


def _parse_preamble(data: bytes) -> dict:
    if len(data) < PREAMBLE.size:
        raise _fail(f"{len(data)} bytes is shorter than the {PREAMBLE.size}-byte preamble (truncated?)")
    magic, major, minor, header_len, header_crc = PREAMBLE.unpack_from(data)
    if magic != MAGIC:
        raise _fail(f"magic {magic!r}, expected {MAGIC!r}")
    if major not in READABLE_MAJORS:
        raise _fail(f"format version {major}.{minor}; this reader understands {' and '.join(f'{m}.x' for m in READABLE_MAJORS)}")
    if header_len > min(MAX_HEADER, len(data) - PREAMBLE.size):
        raise _fail(f"header length {header_len} exceeds the file (truncated?)")
    raw = data[PREAMBLE.size : PREAMBLE.size + header_len]
    if zlib.crc32(raw) != header_crc:
        raise _fail("header checksum mismatch (the file is corrupt)")
    try:
        header = json.loads(_inflate(raw) if major >= 2 else raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise _fail(f"header is not JSON: {err}") from err
    if not isinstance(header, dict) or not all(k in header for k in ("model", "sections", "layers", "tensors")):
        raise _fail("header lacks model / sections / layers / tensors")
    header["_data_start"] = PREAMBLE.size + header_len
    return header


def _inflate(raw: bytes) -> bytes:
    """zlib-decompress a header, refusing more than MAX_HEADER bytes (no decompression bombs)."""
    inflater = zlib.decompressobj()
    try:
        text = inflater.decompress(raw, MAX_HEADER)
    except zlib.error as err:
        raise _fail(f"header does not decompress: {err}") from err
    if inflater.unconsumed_tail or inflater.unused_data or not inflater.eof:
        raise _fail(f"header is truncated, has trailing bytes or inflates beyond {MAX_HEADER} bytes")
    return text


def _sections(data: bytes, header: dict) -> dict[str, bytes]:
    start, size = header["_data_start"], len(data) - header["_data_start"]
    spans, out = [], {}
    try:
        for s in header["sections"]:
            name, offset, length, crc = str(s["name"]), int(s["offset"]), int(s["length"]), int(s["crc32"])
            if offset < 0 or length < 0 or offset + length > size:
                raise _fail(f"section {name!r} [{offset}, {offset + length}) lies outside the {size}-byte data area")
            blob = data[start + offset : start + offset + length]
            if zlib.crc32(blob) != crc:
                raise _fail(f"section {name!r} checksum mismatch (the file is corrupt)")
            spans.append((offset, offset + length, name))
            out[name] = blob
    except (KeyError, TypeError) as err:
        raise _fail(f"malformed section entry: {err}") from err
    spans.sort()
    for (_, end, a), (begin, _, b) in zip(spans, spans[1:]):
        if begin < end:
            raise _fail(f"sections {a!r} and {b!r} overlap")
    if sum(e - b for b, e, _ in spans) != size:
        raise _fail("the data area holds bytes that no section names (or is truncated)")
    return out


def _stream(entry: dict, sections: dict[str, bytes]) -> HuffmanStream:
    return HuffmanStream([int(c) for c in entry["count"]], [int(s) for s in entry["symbols"]], int(entry["length"]),
                         int(entry["n_bits"]), sections[entry["section"]])


def _codebook(entry: dict, sections: dict[str, bytes]) -> np.ndarray:
    """A layer's codebook as float32 (stored as float32, or float16 when `codebook_dtype` says so)."""
    dtype = entry.get("codebook_dtype", "float32")
    if dtype not in DTYPES:
        raise _fail(f"layer {entry['name']!r}: codebook_dtype {dtype!r} is not one of {sorted(DTYPES)}")
    blob = sections[entry["codebook"]]
    if len(blob) % np.dtype(DTYPES[dtype]).itemsize:
        raise _fail(f"layer {entry['name']!r}: a {len(blob)}-byte codebook is not a whole number of {dtype}")
    return np.frombuffer(blob, dtype=DTYPES[dtype]).astype(np.float32)


def _tensor(entry: dict, sections: dict[str, bytes]) -> np.ndarray:
    dtype = np.dtype(DTYPES[entry["dtype"]])
    shape = tuple(int(d) for d in entry["shape"])
    blob = sections[entry["section"]]
    if len(blob) != int(np.prod(shape)) * dtype.itemsize:
        raise _fail(f"tensor {entry['name']!r}: {len(blob)} bytes do not fit shape {shape}")
    return np.frombuffer(blob, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))


def parse(data: bytes) -> NncModel:
    """Validate and parse .nnc bytes."""
    header = _parse_preamble(data)
    sections = _sections(data, header)
    try:
        layers = [EncodedLayer(str(e["name"]), tuple(int(d) for d in e["shape"]), int(e["index_bits"]),
                               int(e["n_fillers"]), _codebook(e, sections),
                               _stream(e["index"], sections), _stream(e["clusters"], sections))
                  for e in header["layers"]]
        tensors = {str(e["name"]): _tensor(e, sections) for e in header["tensors"]}
    except (KeyError, TypeError, ValueError) as err:
        if isinstance(err, NncFormatError):
            raise
        raise _fail(f"malformed layer or tensor entry: {err!r}") from err
    return NncModel(header["model"], layers, tensors, header.get("meta", {}))


def read_nnc(path: str | os.PathLike) -> NncModel:
    """Read and validate a .nnc file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f".nnc file {str(path)!r} does not exist")
    try:
        return parse(path.read_bytes())
    except NncFormatError as err:
        raise NncFormatError(f"{path}: {err}") from None
