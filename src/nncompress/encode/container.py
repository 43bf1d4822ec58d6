"""Writer and reader of the `.nnc` container, format 3.0 (byte layout and rules: docs/format.md).

A file stores, per tensor of a model, either its chain of transform encodings (each stage's
`Encoded`: kind, JSON meta and named tensors, innermost first, decoded through
`TRANSFORM_KINDS[kind].decode`) or its plain value. Each named tensor is one section whose byte
codec (raw, packed, huffman, relative; `codecs.py`) the writer picks as the smallest. After a mask
stage, a per-element tensor whose pruned entries all hold one value is stored at the kept
positions only ("sparse"), and non-final stages keep only their integer / bool tensors (their
float values are what the final stage decodes to anyway).

`read_nnc` checks everything (magic, version, CRCs, bounds, overlaps, every declared shape, count
and codec against the section lengths and `MAX_ELEMENTS`) before allocating any tensor, so a
truncated, bit-flipped or hostile file raises `NncFormatError`. 1.x / 2.x files are read through
`legacy.py`.
"""
from __future__ import annotations

import json
import math
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..fileio import atomic_write_bytes, loads_bounded
from ..parametrize import TRANSFORM_KINDS, Encoded
from ..validate import UserError
from . import codecs
from .codecs import DTYPE_NAMES, DTYPES

MAGIC = b"NNC\x01"
VERSION = (3, 0)
READABLE_MAJORS = (1, 2, 3)  # 1.x: JSON header; 2.x: zlib header, Deep Compression layers; 3.x: chains
PREAMBLE = struct.Struct("<4sHHII")
MAX_HEADER = 64 << 20  # bytes of header JSON a reader accepts (after decompression)
MAX_ELEMENTS = 1 << 30  # elements a reader allocates for one file, all tensors together
#: bytes a reader decodes from one file (arrays at their dtype, plus each chain's float32 output):
#: at most DECODE_FIXED_BYTES + DECODE_EXPANSION x the file size, so a small file cannot declare a huge
#: constant (0-bit packed) or fully pruned tensor and make the reader allocate gigabytes
DECODE_FIXED_BYTES = 64 << 20
DECODE_EXPANSION = 256  # int64 k-means indices from ~5-bit codes, masks from relative indices, float outputs
OVERHEAD = "(header)"  # key of `NncModel.sizes`: the preamble and the header's shared part


class NncFormatError(UserError):
    """The file is not a valid .nnc file (the message says what is wrong)."""


def fail(what: str) -> NncFormatError:
    return NncFormatError(f"not a valid .nnc file: {what}")


@dataclass
class StoredLayer:
    """One transformed tensor as stored: its chain, each array's codec entry and payload bytes
    (`storage[stage][tensor]`), and its byte share of the file (sections + header share)."""

    name: str
    shape: tuple[int, ...]
    chain: list[Encoded]
    storage: list[dict[str, dict]]
    nbytes: int


@dataclass
class NncModel:
    """A model as the container sees it: `chains` (tensor name -> Encoded per transform, innermost
    first) and plain `tensors`, under state-dict names such as `fc1.weight`. `parse` also fills
    `shapes` (of the decoded chains), `storage` (codec entries), `sizes` (bytes per tensor;
    `OVERHEAD` for the rest) and `version`."""

    model: dict
    chains: dict[str, list[Encoded]] = field(default_factory=dict)
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    storage: dict[str, list[dict[str, dict]]] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)
    version: tuple[int, int] = VERSION

    @property
    def layers(self) -> list[StoredLayer]:
        """The transformed tensors with their storage (after `parse`), in file order."""
        return [StoredLayer(name, self.shapes.get(name) or tuple(_decoded_shape(chain)), chain,
                            self.storage.get(name, []), self.sizes.get(name, 0)) for name, chain in self.chains.items()]


def _decoded_shape(chain: list[Encoded]) -> torch.Size:
    return TRANSFORM_KINDS[chain[-1].kind].decode(chain[-1]).shape


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


def _array(values: torch.Tensor, blobs: list[bytes], sparse: dict | None = None) -> dict:
    codec, payload = codecs.encode(values)
    blobs.append(payload)
    entry = {"dtype": DTYPE_NAMES[values.dtype], "shape": list(values.shape), "section": len(blobs) - 1, "codec": codec}
    return {**entry, "sparse": sparse} if sparse else entry


def _stage_entries(chain: list[Encoded], blobs: list[bytes]) -> list[dict]:
    """Header entries of a chain's stages (see the module doc for what is left out)."""
    stages, mask = [], None
    for i, encoded in enumerate(chain):
        arrays = {}
        for name, tensor in encoded.tensors.items():
            tensor = tensor.detach().cpu()
            if i < len(chain) - 1 and tensor.is_floating_point():
                continue
            fill = _sparse_fill(tensor, mask[2]) if mask else None
            if fill is None:
                arrays[name] = _array(tensor, blobs)
            else:
                sparse = {"mask": [mask[0], mask[1]], "fill": fill}
                arrays[name] = {**_array(tensor[mask[2]], blobs, sparse), "shape": list(tensor.shape)}
        stages.append({"kind": encoded.kind, "meta": encoded.meta, "tensors": arrays})
        if mask is None and getattr(TRANSFORM_KINDS.get(encoded.kind), "role", "") == "mask":
            mask = next(((i, n, t.detach().cpu()) for n, t in encoded.tensors.items() if t.dtype == torch.bool), None)
    return stages


def _json(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False)


def serialize(nnc: NncModel) -> bytes:
    """The bytes of a .nnc 3.0 file."""
    blobs: list[bytes] = []
    entries = [{"name": name, "shape": list(_decoded_shape(chain)), "chain": _stage_entries(chain, blobs)}
               for name, chain in nnc.chains.items()]
    entries += [{"name": name, "value": _array(t.detach().cpu(), blobs)} for name, t in nnc.tensors.items()]
    sections, offset = [], 0
    for blob in blobs:
        sections.append({"offset": offset, "length": len(blob), "crc32": zlib.crc32(blob)})
        offset += len(blob)
    try:
        text = _json({"model": nnc.model, "meta": nnc.meta, "sections": sections, "tensors": entries})
    except (TypeError, ValueError) as err:
        raise ValueError(f"the model description, meta or a transform's meta is not JSON: {err}") from err
    header = zlib.compress(text.encode(), 9)
    return PREAMBLE.pack(MAGIC, *VERSION, len(header), zlib.crc32(header)) + header + b"".join(blobs)


def write_nnc(path: str | os.PathLike, nnc: NncModel) -> int:
    """Write atomically; returns the file size in bytes."""
    data = serialize(nnc)
    atomic_write_bytes(path, data)
    return len(data)


# --- reading: preamble, header, sections ----------------------------------------------------------

def parse_preamble(data: bytes) -> tuple[dict, int]:
    """The header (checked: magic, version, length, CRC, zlib, JSON object) and the major version."""
    if len(data) < PREAMBLE.size:
        raise fail(f"{len(data)} bytes is shorter than the {PREAMBLE.size}-byte preamble (truncated?)")
    magic, major, minor, header_len, header_crc = PREAMBLE.unpack_from(data)
    if magic != MAGIC:
        raise fail(f"magic {magic!r}, expected {MAGIC!r}")
    if major not in READABLE_MAJORS:
        raise fail(f"format version {major}.{minor}; this reader understands "
                   f"{', '.join(f'{m}.x' for m in READABLE_MAJORS)}")
    if header_len > min(MAX_HEADER, len(data) - PREAMBLE.size):
        raise fail(f"header length {header_len} exceeds the file (truncated?)")
    raw = data[PREAMBLE.size : PREAMBLE.size + header_len]
    if zlib.crc32(raw) != header_crc:
        raise fail("header checksum mismatch (the file is corrupt)")
    text = _inflate(raw) if major >= 2 else raw
    header = loads_bounded(text, "not a valid .nnc file: header", NncFormatError)  # items / depth bounded
    if not isinstance(header, dict):
        raise fail("header is not a JSON object")
    header["_data_start"] = PREAMBLE.size + header_len
    return header, major


def _inflate(raw: bytes) -> bytes:
    """zlib-decompress a header, refusing more than MAX_HEADER bytes (no decompression bombs)."""
    inflater = zlib.decompressobj()
    try:
        text = inflater.decompress(raw, MAX_HEADER)
    except zlib.error as err:
        raise fail(f"header does not decompress: {err}") from err
    if inflater.unconsumed_tail or inflater.unused_data or not inflater.eof:
        raise fail(f"header is truncated, has trailing bytes or inflates beyond {MAX_HEADER} bytes")
    return text


def section_blobs(data: bytes, header: dict, named: bool = False) -> list[bytes]:
    """Each section's bytes, after checking bounds, CRCs, overlaps and that they fill the data area."""
    start, size = header["_data_start"], len(data) - header["_data_start"]
    spans, out = [], []
    if not isinstance(header.get("sections"), list):
        raise fail("header lacks a sections list")
    for i, s in enumerate(header["sections"]):
        try:
            name = str(s["name"]) if named else str(i)
            offset, length, crc = (_natural(s[k], f"section {name} {k}") for k in ("offset", "length", "crc32"))
        except (KeyError, TypeError) as err:
            raise fail(f"malformed section entry {i}: {err!r}") from err
        if offset + length > size:
            raise fail(f"section {name!r} [{offset}, {offset + length}) lies outside the {size}-byte data area")
        blob = data[start + offset : start + offset + length]
        if zlib.crc32(blob) != crc:
            raise fail(f"section {name!r} checksum mismatch (the file is corrupt)")
        spans.append((offset, offset + length, name))
        out.append(blob)
    spans.sort()
    for (_, end, a), (begin, _, b) in zip(spans, spans[1:]):
        if begin < end:
            raise fail(f"sections {a!r} and {b!r} overlap")
    if sum(e - b for b, e, _ in spans) != size:
        raise fail("the data area holds bytes that no section names (or is truncated)")
    return out


def _natural(value: Any, what: str, limit: int = 1 << 62) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= limit:
        raise fail(f"{what} = {value!r} is not an integer in [0, {limit}]")
    return value


def check_shape(shape: Any, what: str) -> tuple[int, ...]:
    """A declared shape, each dimension and the element count at most MAX_ELEMENTS."""
    if not isinstance(shape, list) or len(shape) > 16:
        raise fail(f"{what}: shape {shape!r} is not a list of at most 16 dimensions")
    dims = tuple(_natural(d, f"{what}: a dimension", MAX_ELEMENTS) for d in shape)
    if math.prod(dims) > MAX_ELEMENTS:
        raise fail(f"{what}: shape {list(dims)} has more than MAX_ELEMENTS = {MAX_ELEMENTS} elements")
    return dims


def byte_shares(header: dict, file_len: int, owners: dict[str, tuple[Any, list[int]]]) -> dict[str, int]:
    """Bytes of the file per tensor: its sections, plus the compressed header split in proportion to
    the JSON of its entry and section entries; `OVERHEAD` gets the preamble and the rest, so the
    shares add up to the file size exactly."""
    header_len = header["_data_start"] - PREAMBLE.size
    public = {k: v for k, v in header.items() if not k.startswith("_")}
    total_json = len(_json(public))
    sizes = {}
    for name, (entry, section_ids) in owners.items():
        weight = len(_json(entry)) + sum(len(_json(header["sections"][i])) + 1 for i in section_ids)
        sizes[name] = sum(header["sections"][i]["length"] for i in section_ids) + header_len * weight // total_json
    sizes[OVERHEAD] = file_len - sum(sizes.values())
    return sizes


# --- reading 3.0 ---------------------------------------------------------------------------------

def _check_array(a: Any, where: str, blobs: list[bytes], stages: list[dict]) -> int:
    """Check one stored array's entry (dtype, shape, section, sparse reference, codec vs payload
    length) without decoding it; returns its element count."""
    if not isinstance(a, dict) or a.get("dtype") not in DTYPES:
        raise fail(f"{where}: dtype {a.get('dtype') if isinstance(a, dict) else a!r} is not one of {sorted(DTYPES)}")
    numel = math.prod(check_shape(a.get("shape"), where))
    section = _natural(a.get("section"), f"{where}: section", len(blobs) - 1)
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


def check_decoded_bytes(decoded: int, file_len: int) -> None:
    """The decode budget of a file (see DECODE_FIXED_BYTES), checked before anything is allocated."""
    limit = DECODE_FIXED_BYTES + DECODE_EXPANSION * file_len
    if decoded > limit:
        raise fail(f"the tensors decode to {decoded} bytes, more than {limit} for a {file_len}-byte file "
                   f"({DECODE_FIXED_BYTES} + {DECODE_EXPANSION} x the file size)")


def _check_entries(header: dict, blobs: list[bytes], file_len: int) -> list[dict]:
    """Check every tensor entry before anything is allocated (MAX_ELEMENTS over the whole file and
    the decode budget `check_decoded_bytes`)."""
    entries, total, names, decoded = header.get("tensors"), 0, set(), 0
    if not isinstance(entries, list) or not isinstance(header.get("model"), dict):
        raise fail("header lacks a model object or a tensors list")
    for entry in entries:
        name = entry.get("name") if isinstance(entry, dict) else None
        if not isinstance(name, str) or name in names or ("chain" in entry) == ("value" in entry):
            raise fail(f"tensor entry {str(entry)[:80]!r}: needs a new name and one of chain / value")
        names.add(name)
        if "value" in entry:
            numel = _check_array(entry["value"], name, blobs, [])
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
                numel = _check_array(a, f"{name}: stage {i} ({stage['kind']}) tensor {t_name!r}", blobs, chain[:i])
                total, decoded = total + numel, decoded + numel * codecs.itemsize(a["dtype"])
        if total > MAX_ELEMENTS:
            raise fail(f"the tensors hold more than MAX_ELEMENTS = {MAX_ELEMENTS} elements")
        check_decoded_bytes(decoded, file_len)
    if total > MAX_ELEMENTS:
        raise fail(f"the tensors hold more than MAX_ELEMENTS = {MAX_ELEMENTS} elements")
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
        from .legacy import parse_legacy  # legacy.py builds on this module's checks

        return parse_legacy(data, header, major)
    blobs = section_blobs(data, header)
    entries = _check_entries(header, blobs, len(data))
    nnc = NncModel(header["model"], meta=header.get("meta", {}), version=(major, 0))
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
