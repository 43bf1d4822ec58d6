"""Helpers of the reliability tests: a small zoo model's .nnc / .safetensors files, and crafting
hostile variants with valid checksums (so the parser itself, not the CRC check, is exercised)."""
from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path

import torch

import nncompress as nc
from nncompress.encode.container import serialize
from nncompress.encode.model import encode_model
from nncompress.zoo import build_model

DESC = {"arch": "lenet300", "in_shape": [1, 8, 8], "num_classes": 10}
GOLDEN = Path(__file__).resolve().parents[1] / "encode" / "golden"


def deep_compressed(seed: int = 0) -> torch.nn.Module:
    """lenet300 on 8x8 inputs: global magnitude pruning then 3-bit k-means on every layer."""
    torch.manual_seed(seed)
    model = build_model("lenet300", (1, 8, 8), 10).eval()
    nc.prune_(model, nc.MagnitudePrune(sparsity=0.8, scope="global"))
    nc.quantize_(model, nc.KMeansQuant(bits=3))
    return model


def nnc_bytes() -> bytes:
    return serialize(encode_model(deep_compressed(), DESC, {"dataset": "digits"}))


def split(data: bytes) -> tuple[dict, list[bytes]]:
    """(header JSON, section payloads) of a .nnc 2.x / 3.x file."""
    header_len = struct.unpack_from("<I", data, 8)[0]
    header = json.loads(zlib.decompress(data[16 : 16 + header_len]))
    start = 16 + header_len
    blobs = [data[start + s["offset"] : start + s["offset"] + s["length"]] for s in header["sections"]]
    return header, blobs


def assemble(header: dict | bytes, blobs: list[bytes], major: int = 3) -> bytes:
    """A file with valid checksums: sections laid out in order, CRCs and header CRC recomputed.
    `header` may be raw JSON bytes (for malformed JSON)."""
    if isinstance(header, dict):
        offset = 0
        for section, blob in zip(header["sections"], blobs):
            section.update(offset=offset, length=len(blob), crc32=zlib.crc32(blob))
            offset += len(blob)
        header = json.dumps(header).encode()
    raw = zlib.compress(header)
    return struct.pack("<4sHHII", b"NNC\x01", major, 0, len(raw), zlib.crc32(raw)) + raw + b"".join(blobs)


def tensor_entry(header: dict, name: str) -> dict:
    return next(e for e in header["tensors"] if e["name"] == name)


def save_recipe_model(path: Path, recipe_methods: list[dict] | None = None, **meta_edits: object) -> Path:
    """A lenet300 (8x8 inputs) saved with save_model, then its metadata replaced/edited."""
    model = build_model("lenet300", (1, 8, 8), 10)
    nc.save_model(model, path, arch="lenet300", in_shape=(1, 8, 8), num_classes=10)
    if recipe_methods is not None or meta_edits:
        meta = {"arch": "lenet300", "in_shape": [1, 8, 8], "num_classes": 10}
        if recipe_methods is not None:
            meta["recipe"] = {"fold_batchnorm": False, "converted": False, "methods": recipe_methods}
        meta.update(meta_edits)
        rewrite_metadata(path, json.dumps(meta))
    return path


def rewrite_metadata(path: Path, text: str) -> None:
    """Replace the file's 'nncompress' metadata string, keeping its tensors."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path))
    save_file(tensors, str(path), metadata={"nncompress": text})
