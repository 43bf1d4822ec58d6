"""Writer and reader of the `.nnc` container, format 3.x (byte layout and rules: docs/format.md; 3.3: the compact header).

A file stores, per tensor of a model, either its chain of transform encodings (each stage's
`Encoded`: kind, JSON meta and named tensors, innermost first, decoded through
`TRANSFORM_KINDS[kind].decode`) or its plain value. Each named tensor is one section whose byte
codec (raw, packed, huffman, relative, rans, context; `codecs.py`) the writer picks as the smallest. After a mask
stage, a per-element tensor whose pruned entries all hold one value is stored at the kept
positions only ("sparse"), and non-final stages keep only their integer / bool tensors (their
float values are what the final stage decodes to anyway).

`read_nnc` checks everything (magic, version, CRCs, bounds, overlaps, every declared shape, count
and codec against the section lengths and `MAX_ELEMENTS`) before allocating any tensor, so a
truncated, bit-flipped or hostile file raises `NncFormatError`. 1.x / 2.x files are read through
`legacy.py`; what both readers share (preamble, sections, bounds, `NncModel`) is in `layout.py`.
"""
from __future__ import annotations

import math
import os
import zlib
from pathlib import Path
from typing import Any

import torch

from ..fileio import atomic_write_bytes
from ..parametrize import TRANSFORM_KINDS, Encoded
from . import codecs
from .codecs import DTYPE_NAMES, DTYPES
from .header_dictionary import DICTIONARY
from .layout import (COMPACT_MINOR, MAGIC, PREAMBLE, VERSION, NncFormatError, NncModel, byte_shares, check_decoded_bytes,
                     check_element_count, check_natural, check_shape, compact_json, decoded_shape, fail, parse_preamble,
                     section_blobs)
from .layout import OVERHEAD, Coding, StoredLayer  # noqa: F401  (re-exported)
from .legacy import parse_legacy

#: the minor version a codec needs (docs/format.md); a file takes the highest its arrays need, so a file
#: with neither codec stays 3.0
CODEC_MINOR = {"rans": 1, "context": 2}


# --- writing -------------------------------------------------------------------------------------

def _sparse_fill(values: torch.Tensor, keep: torch.Tensor) -> int | float | None:
    """The one value every pruned entry of `values` holds (bitwise), or None."""
    if values.shape != keep.shape or values.dtype == torch.bool or bool(keep.all()):
        return None
    bits = codecs.bit_view(values[~keep])
    if not bool((bits == bits[0]).all()):
        return None
    fill = values[~keep][0].item()
    if isinstance(fill, float) and not math.isfinite(fill):
        return None
    return fill


def _array(values: torch.Tensor, blobs: list[bytes], sparse: dict | None = None, entropy: bool = False) -> dict:
    codec, payload = codecs.encode(values, entropy)
    blobs.append(payload)
    entry = {"dtype": DTYPE_NAMES[values.dtype], "shape": list(values.shape), "section": len(blobs) - 1, "codec": codec}
    return {**entry, "sparse": sparse} if sparse else entry


def _stage_entries(chain: list[Encoded], blobs: list[bytes], context_masks: bool = False) -> list[dict]:
    """Header entries of a chain's stages (see the module doc for what is left out); `context_masks`:
    bool arrays may use the context codec."""
    stages, mask = [], None
    for i, encoded in enumerate(chain):
        arrays, entropy = {}, set(encoded.meta.get("entropy_coded", ()))
        for name, tensor in encoded.tensors.items():
            tensor = tensor.detach().cpu()
            if i < len(chain) - 1 and tensor.is_floating_point():
                continue
            fill = _sparse_fill(tensor, mask[2]) if mask else None
            if fill is None:
                arrays[name] = _array(tensor, blobs, entropy=name in entropy or (context_masks and tensor.dtype == torch.bool))
            else:
                sparse = {"mask": [mask[0], mask[1]], "fill": fill}
                arrays[name] = {**_array(tensor[mask[2]], blobs, sparse, name in entropy), "shape": list(tensor.shape)}
        stages.append({"kind": encoded.kind, "meta": encoded.meta, "tensors": arrays})
        if mask is None and getattr(TRANSFORM_KINDS.get(encoded.kind), "role", "") == "mask":
            mask = next(((i, n, t.detach().cpu()) for n, t in encoded.tensors.items() if t.dtype == torch.bool), None)
    return stages


def _version(entries: list[dict], header_coding: str) -> tuple[int, int]:
    arrays = [a for e in entries for a in ([e["value"]] if "value" in e else
                                            [a for s in e["chain"] for a in s["tensors"].values()])]
    return VERSION[0], max([VERSION[1], COMPACT_MINOR if header_coding == "compact" else 0]
                           + [CODEC_MINOR.get(a["codec"]["name"], 0) for a in arrays])


def _layout(nnc: NncModel) -> tuple[dict, list[bytes]]:
    """The header object (before compression) and the sections' bytes of `nnc`."""
    blobs: list[bytes] = []
    coding = nnc.coding  # a Coding: its values are checked when it is made
    context = coding.masks == "context"
    entries = [{"name": name, "shape": list(decoded_shape(chain)), "chain": _stage_entries(chain, blobs, context)}
               for name, chain in nnc.chains.items()]
    entries += [{"name": name, "value": _array(t.detach().cpu(), blobs)} for name, t in nnc.tensors.items()]
    header = {"model": nnc.model, "meta": nnc.meta, "sections": _section_table(blobs, coding.header),
              "tensors": entries}
    if coding.header == "compact":
        header["crc32"] = zlib.crc32(b"".join(blobs))
    return header, blobs


def _section_table(blobs: list[bytes], header_coding: str) -> list:
    """3.0: offset, length and CRC-32 of each section; compact (3.3): the lengths only (the sections
    follow each other in order, and one CRC-32 covers the data area)."""
    if header_coding == "compact":
        return [len(blob) for blob in blobs]
    sections, offset = [], 0
    for blob in blobs:
        sections.append({"offset": offset, "length": len(blob), "crc32": zlib.crc32(blob)})
        offset += len(blob)
    return sections


def serialize_header(nnc: NncModel) -> dict:
    """The header object `serialize` writes for `nnc` (before compression)."""
    return _layout(nnc)[0]


def serialize(nnc: NncModel) -> bytes:
    """The bytes of a .nnc 3.x file (3.0 unless a codec or the compact header needs a later minor)."""
    header, blobs = _layout(nnc)
    try:
        text = compact_json(header).encode()
    except (TypeError, ValueError) as err:
        raise ValueError(f"the model description, meta or a transform's meta is not JSON: {err}") from err
    if nnc.coding.header == "compact":
        compressor = zlib.compressobj(9, zdict=DICTIONARY)
        stored = compressor.compress(text) + compressor.flush()
    else:
        stored = zlib.compress(text, 9)
    version = _version(header["tensors"], nnc.coding.header)
    return PREAMBLE.pack(MAGIC, *version, len(stored), zlib.crc32(stored)) + stored + b"".join(blobs)


def write_nnc(path: str | os.PathLike, nnc: NncModel) -> int:
    """Write atomically; returns the file size in bytes."""
    data = serialize(nnc)
    atomic_write_bytes(path, data)
    return len(data)


# --- reading 3.0 ---------------------------------------------------------------------------------

def _check_array(a: Any, where: str, blobs: list[bytes], stages: list[dict], used: set[int]) -> int:
    """Check one stored array's entry (dtype, shape, section, sparse reference, codec vs payload
    length) without decoding it; returns its element count. `used`: the sections named so far (each
    section belongs to one array, so the byte shares stay the file's bytes)."""
    if not isinstance(a, dict) or a.get("dtype") not in DTYPES:
        raise fail(f"{where}: dtype {a.get('dtype') if isinstance(a, dict) else a!r} is not one of {sorted(DTYPES)}")
    numel = math.prod(check_shape(a.get("shape"), where))
    section = check_natural(a.get("section"), f"{where}: section", len(blobs) - 1)
    if section in used:
        raise fail(f"{where}: section {section} already holds another array")
    used.add(section)
    sparse = a.get("sparse")
    if sparse is not None:
        _check_sparse(sparse, a, where, stages)
    try:
        codecs.check(a.get("codec"), a["dtype"], len(blobs[section]), numel, sparse is not None)
    except ValueError as err:
        raise fail(f"{where}: {err}") from err
    return numel


def _check_sparse(sparse: Any, a: dict, where: str, stages: list[dict]) -> None:
    ref = sparse.get("mask") if isinstance(sparse, dict) else None
    fill = sparse.get("fill") if isinstance(sparse, dict) else None
    ok = isinstance(ref, list) and len(ref) == 2 and isinstance(ref[0], int) and 0 <= ref[0] < len(stages)
    mask = stages[ref[0]]["tensors"].get(ref[1]) if ok and isinstance(ref[1], str) else None
    if not (mask and mask["dtype"] == "bool" and "sparse" not in mask and mask["shape"] == a["shape"]):
        raise fail(f"{where}: sparse reference {ref!r} is not an earlier stage's dense bool tensor of shape {a['shape']}")
    floating = a["dtype"] in codecs.FLOATS
    lo, hi = (-math.inf, math.inf) if floating else codecs.int_range(a["dtype"])
    if isinstance(fill, bool) or not isinstance(fill, float if floating else int) or not lo <= fill <= hi:
        raise fail(f"{where}: fill {fill!r} is not a {a['dtype']} value")


def _check_entries(header: dict, blobs: list[bytes], file_len: int) -> list[dict]:
    """Check every tensor entry before anything is allocated (MAX_ELEMENTS over the whole file and
    the decode budget `check_decoded_bytes`)."""
    entries, total, names, decoded, used = header.get("tensors"), 0, set(), 0, set()
    if not isinstance(entries, list) or not isinstance(header.get("model"), dict):
        raise fail("header lacks a model object or a tensors list")
    for entry in entries:
        name = entry.get("name") if isinstance(entry, dict) else None
        if not isinstance(name, str) or name in names or ("chain" in entry) == ("value" in entry):
            raise fail(f"tensor entry {str(entry)[:80]!r}: needs a new name and one of chain / value")
        names.add(name)
        if "value" in entry:
            numel = _check_array(entry["value"], name, blobs, [], used)
            total, decoded = total + numel, decoded + numel * codecs.itemsize(entry["value"]["dtype"])
            continue
        decoded += 4 * math.prod(check_shape(entry.get("shape"), name))  # the chain's float output
        chain = entry["chain"]
        if not isinstance(chain, list) or not chain:
            raise fail(f"{name}: chain must be a non-empty list of stages")
        for i, stage in enumerate(chain):
            if not (isinstance(stage, dict) and isinstance(stage.get("kind"), str) and isinstance(stage.get("meta"), dict)
                    and isinstance(stage.get("tensors"), dict)):
                raise fail(f"{name}: stage {i} needs kind (string), meta and tensors (objects)")
            for t_name, a in stage["tensors"].items():
                numel = _check_array(a, f"{name}: stage {i} ({stage['kind']}) tensor {t_name!r}", blobs, chain[:i],
                                     used)
                total, decoded = total + numel, decoded + numel * codecs.itemsize(a["dtype"])
        check_element_count(total)
        check_decoded_bytes(decoded, file_len)
    check_element_count(total)
    check_decoded_bytes(decoded, file_len)
    return entries


def _decode_array(a: dict, where: str, blobs: list[bytes], decoded: list[Encoded]) -> torch.Tensor:
    shape = tuple(a["shape"])
    keep = None
    if "sparse" in a:
        stage, name = a["sparse"]["mask"]
        keep = decoded[stage].tensors[name]
    count = int(keep.sum()) if keep is not None else math.prod(shape)
    try:
        if codecs.check(a["codec"], a["dtype"], len(blobs[a["section"]]), math.prod(shape), keep is not None) != count:
            raise ValueError(f"{count} kept positions, a different number of stored values")
        flat = codecs.decode(a["codec"], blobs[a["section"]], a["dtype"], count)
    except ValueError as err:
        raise fail(f"{where}: {err}") from err
    if flat.is_floating_point() and flat.numel() and not bool(torch.isfinite(flat.float()).all()):
        raise fail(f"{where}: holds NaN or infinite values (section {a['section']})")
    if keep is None:
        return flat.reshape(shape)
    dense = torch.full(shape, a["sparse"]["fill"], dtype=DTYPES[a["dtype"]])
    dense[keep] = flat
    return dense


def _decode_entry(entry: dict, blobs: list[bytes]) -> tuple[list[Encoded] | torch.Tensor, list[dict]]:
    name = entry["name"]
    if "value" in entry:
        return _decode_array(entry["value"], name, blobs, []), []
    chain: list[Encoded] = []
    for i, stage in enumerate(entry["chain"]):
        tensors = {t: _decode_array(a, f"{name}: stage {i} tensor {t!r}", blobs, chain) for t, a in stage["tensors"].items()}
        chain.append(Encoded(stage["kind"], tensors, stage["meta"]))
    storage = [{t: {**a, "bytes": len(blobs[a["section"]])} for t, a in stage["tensors"].items()} for stage in entry["chain"]]
    return chain, storage


def _section_ids(entry: dict) -> list[int]:
    arrays = [entry["value"]] if "value" in entry else [a for s in entry["chain"] for a in s["tensors"].values()]
    return [a["section"] for a in arrays]


#: What a checked-but-hostile file may still provoke deep inside numpy / torch / bitarray; `parse`
#: reports them as NncFormatError so a reader sees one error type (the fuzzer looks for others).
_LEAKS = (KeyError, IndexError, TypeError, AttributeError, OverflowError, ZeroDivisionError, RecursionError,
          RuntimeError, ValueError, MemoryError)


def parse(data: bytes) -> NncModel:
    """Validate and parse .nnc bytes (any readable version); any defect raises NncFormatError."""
    try:
        return _parse(data)
    except NncFormatError:
        raise
    except _LEAKS as err:
        raise fail(f"{type(err).__name__}: {str(err)[:200]}") from err


def _parse(data: bytes) -> NncModel:
    header, major = parse_preamble(data)
    if major < 3:
        return parse_legacy(data, header, major)
    blobs = section_blobs(data, header)
    entries = _check_entries(header, blobs, len(data))
    nnc = NncModel(header["model"], meta=header.get("meta", {}), version=(major, PREAMBLE.unpack_from(data)[2]))
    for entry in entries:
        value, storage = _decode_entry(entry, blobs)
        if isinstance(value, torch.Tensor):
            nnc.tensors[entry["name"]] = value
        else:
            nnc.chains[entry["name"]], nnc.storage[entry["name"]] = value, storage
            nnc.shapes[entry["name"]] = tuple(entry["shape"])
    nnc.sizes = byte_shares(header, len(data), {e["name"]: (e, _section_ids(e)) for e in entries})
    return nnc


def read_nnc(path: str | os.PathLike) -> NncModel:
    """Read and validate a .nnc file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f".nnc file {str(path)!r} does not exist")
    try:
        return parse(path.read_bytes())
    except NncFormatError as err:
        raise NncFormatError(f"{path}: {err}") from None
