"""What every `.nnc` version shares (docs/format.md "Byte layout", "Validation", "Byte accounting"):
the in-memory form `NncModel` both readers fill, the preamble and header, the checked sections, and
the bounds a reader enforces before it allocates anything. `container.py` writes and reads 3.0 on
top of it, `legacy.py` reads 1.x / 2.x.
"""
from __future__ import annotations

import itertools
import json
import math
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

import torch

from ..fileio import loads_bounded
from ..parametrize import TRANSFORM_KINDS, Encoded
from ..validate import UserError
from .codecs import MASK_CODINGS
from .header_dictionary import DICTIONARY

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
#: how a writer stores the header: "zlib" (3.0) or "compact" (3.3: a zlib stream from the format's
#: preset dictionary, `header_dictionary.py`, and a section table of lengths under one CRC-32)
HEADER_CODINGS = ("zlib", "compact")
COMPACT_MINOR = 3
OVERHEAD = "(header)"  # key of `NncModel.sizes`: the preamble and the header's shared part


@dataclass(frozen=True)
class Coding:
    """How a writer stores a model (the decoded model is the same under every choice): `masks`
    "relative" (Deep Compression's relative indices) or "context" (also the context codec where
    smaller, 3.2; `codecs.MASK_CODINGS`); `header` "zlib" (3.0) or "compact" (3.3, `HEADER_CODINGS`)."""

    masks: str = "relative"
    header: str = "zlib"

    def __post_init__(self) -> None:
        if self.masks not in MASK_CODINGS:
            raise ValueError(f"mask_coding={self.masks!r} is not one of {MASK_CODINGS}")
        if self.header not in HEADER_CODINGS:
            raise ValueError(f"header_coding={self.header!r} is not one of {HEADER_CODINGS}")


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
    #: writer options (`Coding`), not stored
    coding: Coding = field(default_factory=Coding)

    def __post_init__(self) -> None:
        if not isinstance(self.coding, Coding):
            raise TypeError(f"coding must be a Coding (e.g. Coding('context', 'compact')), not {self.coding!r}")

    @property
    def layers(self) -> list[StoredLayer]:
        """The transformed tensors with their storage (after `parse`), in file order."""
        return [StoredLayer(name, self.shapes.get(name) or tuple(decoded_shape(chain)), chain,
                            self.storage.get(name, []), self.sizes.get(name, 0)) for name, chain in self.chains.items()]


def decoded_shape(chain: list[Encoded]) -> torch.Size:
    """The shape of the tensor a chain decodes to (its last stage's output)."""
    return TRANSFORM_KINDS[chain[-1].kind].decode(chain[-1]).shape


def compact_json(obj: Any) -> str:
    """The header's JSON form: no spaces, no NaN (the writer's bytes and the byte shares use it)."""
    return json.dumps(obj, separators=(",", ":"), allow_nan=False)


# --- reading: preamble, header, sections, bounds --------------------------------------------------

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
    compact = (major, minor) >= (3, COMPACT_MINOR)
    text = _inflate(raw, DICTIONARY if compact else None) if major >= 2 else raw
    header = loads_bounded(text, "not a valid .nnc file: header", NncFormatError)  # items / depth bounded
    if not isinstance(header, dict):
        raise fail("header is not a JSON object")
    # "_arrays": an upper bound on the arrays the header can name (each has one "section" key), which
    # bounds a compact table's length before it is expanded
    header.update(_data_start=PREAMBLE.size + header_len, _compact_allowed=compact, _arrays=text.count(b'"section":'))
    return header, major


def _inflate(raw: bytes, dictionary: bytes | None = None) -> bytes:
    """zlib-decompress a header (from the preset `dictionary` if its stream asks for one: RFC 1950
    FDICT; zlib checks the stream's DICTID against the dictionary's Adler-32), refusing more than
    MAX_HEADER bytes (no decompression bombs)."""
    inflater = zlib.decompressobj(zdict=dictionary) if dictionary else zlib.decompressobj()
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
    if not isinstance(header.get("sections"), list):
        raise fail("header lacks a sections list")
    if "crc32" in header:
        return _compact_blobs(data[start:], header)
    spans, out = [], []
    for i, s in enumerate(header["sections"]):
        if not isinstance(s, dict):
            raise fail(f"section entry {i} = {str(s)[:40]!r} is not an object (a table of lengths needs the compact "
                       "header's top-level crc32)")
        try:
            name = str(s["name"]) if named else str(i)
            offset, length, crc = (check_natural(s[k], f"section {name} {k}") for k in ("offset", "length", "crc32"))
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


def _compact_blobs(area: bytes, header: dict) -> list[bytes]:
    """A compact (3.3) section table, named by the header's top-level `crc32`: the lengths of
    sections that follow each other from the start of the data area and fill it; that one CRC-32
    covers the whole area. At most one section per array the header can name."""
    if not header.get("_compact_allowed"):
        raise fail("a compact section table (top-level crc32) needs format 3.3 or later")
    if len(header["sections"]) > header["_arrays"]:
        raise fail(f"{len(header['sections'])} sections, more than the {header['_arrays']} arrays the header names")
    lengths = [check_natural(n, f"section {i} length (a compact table lists lengths)", len(area))
               for i, n in enumerate(header["sections"])]
    if sum(lengths) != len(area):
        raise fail(f"the sections' lengths add up to {sum(lengths)} bytes, the data area holds {len(area)} (truncated?)")
    if zlib.crc32(area) != check_natural(header.get("crc32"), "data area crc32", 0xFFFFFFFF):
        raise fail("data area checksum mismatch (the file is corrupt)")
    offsets = [0, *itertools.accumulate(lengths)]
    return [area[a:b] for a, b in zip(offsets, offsets[1:])]


def section_length(entry: Any) -> int:
    """A section's length from either form of the table (3.0 object, 3.3 integer)."""
    return entry if isinstance(entry, int) else entry["length"]


def check_natural(value: Any, what: str, limit: int = 1 << 62) -> int:
    """`value` if it is an integer in [0, limit] (not a bool), else a format error naming `what`."""
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= limit:
        raise fail(f"{what} = {value!r} is not an integer in [0, {limit}]")
    return value


def check_shape(shape: Any, what: str) -> tuple[int, ...]:
    """A declared shape, each dimension and the element count at most MAX_ELEMENTS."""
    if not isinstance(shape, list) or len(shape) > 16:
        raise fail(f"{what}: shape {shape!r} is not a list of at most 16 dimensions")
    dims = tuple(check_natural(d, f"{what}: a dimension", MAX_ELEMENTS) for d in shape)
    if math.prod(dims) > MAX_ELEMENTS:
        raise fail(f"{what}: shape {list(dims)} has more than MAX_ELEMENTS = {MAX_ELEMENTS} elements")
    return dims


def byte_shares(header: dict, file_len: int, owners: dict[str, tuple[Any, list[int]]]) -> dict[str, int]:
    """Bytes of the file per tensor: its sections, plus the compressed header split in proportion to
    the JSON of its entry and section entries; `OVERHEAD` gets the preamble and the rest, so the
    shares add up to the file size exactly."""
    header_len = header["_data_start"] - PREAMBLE.size
    public = {k: v for k, v in header.items() if not k.startswith("_")}
    total_json = len(compact_json(public))
    sizes = {}
    for name, (entry, section_ids) in owners.items():
        weight = len(compact_json(entry)) + sum(len(compact_json(header["sections"][i])) + 1 for i in section_ids)
        sizes[name] = sum(section_length(header["sections"][i]) for i in section_ids) + header_len * weight // total_json
    sizes[OVERHEAD] = file_len - sum(sizes.values())
    return sizes


def check_decoded_bytes(decoded: int, file_len: int) -> None:
    """The decode budget of a file (see DECODE_FIXED_BYTES), checked before anything is allocated."""
    limit = DECODE_FIXED_BYTES + DECODE_EXPANSION * file_len
    if decoded > limit:
        raise fail(f"the tensors decode to {decoded} bytes, more than {limit} for a {file_len}-byte file "
                   f"({DECODE_FIXED_BYTES} + {DECODE_EXPANSION} x the file size)")


def check_element_count(total: int) -> None:
    """All tensors of a file together hold at most MAX_ELEMENTS elements."""
    if total > MAX_ELEMENTS:
        raise fail(f"the tensors hold more than MAX_ELEMENTS = {MAX_ELEMENTS} elements")
