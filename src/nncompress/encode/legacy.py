"""Reader of `.nnc` 1.x and 2.x files (docs/format.md, "Versions 1.x and 2.x"), converted to the
3.0 in-memory form: each Deep Compression layer becomes the chain [mask (keep), kmeans (codebook,
indices)] of its weight, every other tensor a float32 tensor.

Those files store per layer two Huffman streams over the same entries (Han et al., ICLR 2016,
sec. 2-4): relative distances d_i (each entry sits d_i positions after the previous one, the first
counting from position 0; a gap wider than 2^index_bits - 1 is bridged by filler entries) and
cluster indices (symbol k = len(codebook) marks a filler, value 0), plus the codebook.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..parametrize import Encoded
from .layout import (NncFormatError, NncModel, byte_shares, check_decoded_bytes, check_element_count, check_natural,
                     check_shape, fail, section_blobs)
from .huffman import HuffmanStream, huffman_decode

DTYPES = {"float32": "<f4", "float16": "<f2"}


def _stream(entry: dict, sections: dict[str, bytes], numel: int, what: str) -> HuffmanStream:
    """A Huffman stream entry, checked against its section and the layer size before decoding."""
    payload = sections[entry["section"]]
    n_bits = check_natural(entry["n_bits"], f"{what}: n_bits")
    length = check_natural(entry["length"], f"{what}: length")
    count, symbols = _naturals(entry["count"], f"{what}: count"), _naturals(entry["symbols"], f"{what}: symbols")
    if not 0 <= n_bits <= 8 * len(payload) or not 0 <= length <= min(n_bits, numel):
        raise fail(f"{what}: {length} symbols in {n_bits} bits do not fit {len(payload)} bytes and {numel} weights")
    if len(symbols) > length + 1 or len(count) > 32:
        raise fail(f"{what}: a Huffman table of {len(symbols)} symbols for {length} entries")
    return HuffmanStream(count, symbols, length, n_bits, payload)


def _naturals(values: object, what: str) -> list[int]:
    if not isinstance(values, list) or len(values) > 1 << 17:
        raise fail(f"{what} is not a list of at most {1 << 17} integers")
    return [check_natural(v, what) for v in values]


def _codebook(entry: dict, sections: dict[str, bytes]) -> np.ndarray:
    """A layer's codebook as float32 (stored as float32, or float16 when `codebook_dtype` says so)."""
    dtype = entry.get("codebook_dtype", "float32")
    if dtype not in DTYPES:
        raise fail(f"layer {entry['name']!r}: codebook_dtype {dtype!r} is not one of {sorted(DTYPES)}")
    blob = sections[entry["codebook"]]
    if not blob or len(blob) % np.dtype(DTYPES[dtype]).itemsize:
        raise fail(f"layer {entry['name']!r}: a {len(blob)}-byte codebook is not a whole number of {dtype}")
    codebook = np.frombuffer(blob, dtype=DTYPES[dtype]).astype(np.float32)
    if not np.isfinite(codebook).all():
        raise fail(f"layer {entry['name']!r}: the codebook holds NaN or infinite values")
    return codebook


def _layer_chain(entry: dict, sections: dict[str, bytes]) -> list[Encoded]:
    """[mask, kmeans] of one legacy layer; every count is checked before the dense arrays exist."""
    name, shape = str(entry["name"]), check_shape(entry["shape"], f"layer {entry['name']!r}")
    numel, codebook = math.prod(shape), _codebook(entry, sections)
    index = _stream(entry["index"], sections, numel, f"layer {name!r} index")
    clusters = _stream(entry["clusters"], sections, numel, f"layer {name!r} clusters")
    try:
        distances, symbols = huffman_decode(index), huffman_decode(clusters)
    except ValueError as err:
        raise fail(f"layer {name!r}: {err}") from err
    k = len(codebook)
    if len(distances) != len(symbols):
        raise fail(f"layer {name!r}: {len(distances)} index entries but {len(symbols)} cluster entries")
    if symbols.size and symbols.max() > k:
        raise fail(f"layer {name!r}: cluster symbol outside the {k}-entry codebook")
    max_gap = (1 << check_natural(entry.get("index_bits"), f"layer {name!r}: index_bits", 32)) - 1
    if distances.size and (distances[1:].min(initial=1) < 1 or distances[0] < 0 or distances.max() > max_gap):
        raise fail(f"layer {name!r}: relative distances must lie in [1, {max_gap}] (the first in [0, {max_gap}])")
    positions = np.cumsum(distances)
    if positions.size and positions[-1] >= numel:
        raise fail(f"layer {name!r}: relative indices point past the tensor end ({positions[-1]} >= {numel})")
    real = symbols < k
    indices = np.full(numel, -1, dtype=np.int64)
    indices[positions[real]] = symbols[real]
    indices_t = torch.from_numpy(indices).view(shape)
    mask = Encoded("mask", {"keep": indices_t >= 0}, {"shape": list(shape)})
    kmeans = Encoded("kmeans", {"codebook": torch.from_numpy(codebook), "indices": indices_t},
                     {"shape": list(shape), "bits": max(1, math.ceil(math.log2(k)))})
    return [mask, kmeans]


def _storage(entry: dict, sections: dict[str, bytes]) -> list[dict[str, dict]]:
    """The legacy streams described as 3.0 codec entries (for per-layer tables)."""
    def huffman(stream: dict, **extra: object) -> dict:
        return {k: stream[k] for k in ("length", "n_bits", "count")} | extra  # tables: not in 3.0 form

    shape = list(entry["shape"])
    keep = {"dtype": "bool", "shape": shape, "bytes": len(sections[entry["index"]["section"]]),
            "codec": {"name": "relative", **huffman(entry["index"], index_bits=int(entry["index_bits"]))}}
    codebook = {"dtype": "float32", "bytes": len(sections[entry["codebook"]]),
                "codec": {"name": "raw", "as": entry.get("codebook_dtype", "float32")}}
    indices = {"dtype": "int64", "shape": shape, "bytes": len(sections[entry["clusters"]["section"]]),
               "codec": {"name": "huffman", **huffman(entry["clusters"], min=0)}, "sparse": {"mask": [0, "keep"], "fill": -1}}
    return [{"keep": keep}, {"codebook": codebook, "indices": indices}]


def _tensor(entry: dict, sections: dict[str, bytes]) -> torch.Tensor:
    dtype = np.dtype(DTYPES[entry["dtype"]])
    shape = check_shape(entry["shape"], f"tensor {entry['name']!r}")
    blob = sections[entry["section"]]
    if len(blob) != math.prod(shape) * dtype.itemsize:
        raise fail(f"tensor {entry['name']!r}: {len(blob)} bytes do not fit shape {shape}")
    values = np.frombuffer(blob, dtype=dtype).astype(np.float32).reshape(shape)
    if not np.isfinite(values).all():
        raise fail(f"tensor {entry['name']!r}: holds NaN or infinite values")
    return torch.from_numpy(values)


def _check_total(header: dict, file_len: int) -> None:
    """Every declared shape, and their sum, within MAX_ELEMENTS and the decode budget (a layer
    decodes to int64 indices, a bool mask and float32 values; a tensor to float32), before decoding."""
    try:
        layers = sum(math.prod(check_shape(e["shape"], f"tensor {e['name']!r}")) for e in header["layers"])
        tensors = sum(math.prod(check_shape(e["shape"], f"tensor {e['name']!r}")) for e in header["tensors"])
    except (KeyError, TypeError) as err:
        raise fail(f"malformed layer or tensor entry: {err!r}") from err
    check_element_count(layers + tensors)
    check_decoded_bytes(13 * layers + 4 * tensors, file_len)


def parse_legacy(data: bytes, header: dict, major: int) -> NncModel:
    """An NncModel from a checked 1.x / 2.x header (see `layout.parse_preamble`)."""
    if not all(k in header for k in ("model", "sections", "layers", "tensors")):
        raise fail("header lacks model / sections / layers / tensors")
    blobs = section_blobs(data, header, named=True)
    names = {str(s["name"]): i for i, s in enumerate(header["sections"])}
    sections = {name: blobs[i] for name, i in names.items()}
    nnc = NncModel(header["model"], meta=header.get("meta", {}), version=(major, 0))
    owners: dict = {}
    _check_total(header, len(data))
    try:
        for entry in header["layers"]:
            name = f"{entry['name']}.weight"
            nnc.chains[name] = _layer_chain(entry, sections)
            nnc.shapes[name], nnc.storage[name] = tuple(entry["shape"]), _storage(entry, sections)
            owned = (entry["index"]["section"], entry["clusters"]["section"], entry["codebook"])
            owners[name] = (entry, [names[s] for s in owned])
        for entry in header["tensors"]:
            nnc.tensors[str(entry["name"])] = _tensor(entry, sections)
            owners[str(entry["name"])] = (entry, [names[entry["section"]]])
    except (KeyError, TypeError, ValueError) as err:
        if isinstance(err, NncFormatError):
            raise
        raise fail(f"malformed layer or tensor entry: {err!r}") from err
    nnc.sizes = byte_shares(header, len(data), owners)
    return nnc
