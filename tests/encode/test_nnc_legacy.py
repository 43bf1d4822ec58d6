"""Files written before format 3.0 still decode to the same tensors (golden/make_legacy.py made
them with the 1.0 and 2.0 writers of their time)."""
import hashlib
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from nncompress.encode.container import NncFormatError, parse, serialize
from nncompress.encode.model import decode_model

GOLDEN = Path(__file__).parent / "golden"
EXPECTED = json.loads((GOLDEN / "legacy_expected.json").read_text())


def digests(model: torch.nn.Module) -> dict:
    return {k: {"shape": list(v.shape), "sha256": hashlib.sha256(np.ascontiguousarray(v.numpy(), "<f4").tobytes()).hexdigest()}
            for k, v in model.state_dict().items()}


@pytest.mark.parametrize("name, version", [("legacy_v1.nnc", (1, 0)), ("legacy_v2.nnc", (2, 0))])
def test_legacy_files_decode_to_the_same_tensors_as_their_writers_decoder(name, version):
    data = (GOLDEN / name).read_bytes()
    assert len(data) == EXPECTED[name]["bytes"]
    nnc = parse(data)
    assert nnc.version == version
    assert digests(decode_model(nnc)) == EXPECTED[name]["tensors"]
    assert sum(nnc.sizes.values()) == len(data)
    assert [c[-1].kind for c in nnc.chains.values()] == ["kmeans"] * 3  # [mask, kmeans] chains
    rewritten = parse(serialize(nnc))  # and they convert to 3.0 losslessly
    assert rewritten.version == (3, 0) and digests(decode_model(rewritten)) == EXPECTED[name]["tensors"]


def test_a_2_0_file_is_larger_than_the_same_model_in_3_0():
    data = (GOLDEN / "legacy_v2.nnc").read_bytes()
    assert len(serialize(parse(data))) < len(data)  # fillers no longer cost a cluster symbol


def header_of(data: bytes) -> dict:
    header_len = struct.unpack_from("<I", data, 8)[0]
    return json.loads(zlib.decompress(data[16 : 16 + header_len]))


def with_header(data: bytes, header: dict) -> bytes:
    raw = zlib.compress(json.dumps(header).encode())
    header_len = struct.unpack_from("<I", data, 8)[0]
    return struct.pack("<4sHHII", data[:4], 2, 0, len(raw), zlib.crc32(raw)) + raw + data[16 + header_len :]


@pytest.mark.parametrize("edit, match", [
    (lambda h: h["sections"][0].update(offset=10**12), "outside"),
    (lambda h: h["sections"][1].update(h["sections"][0]), "overlap"),
    (lambda h: h["layers"][0].update(codebook_dtype="float64"), "codebook_dtype 'float64'"),
    (lambda h: h["layers"][0].update(shape=[10**6, 10**6]), "MAX_ELEMENTS"),
    (lambda h: h["layers"][0]["index"].update(length=10**7), "do not fit"),
    (lambda h: h["layers"][0].update(shape=[3, 2]), "do not fit 277 bytes and 6 weights"),
    (lambda h: h["layers"][0].update(shape=[30, 16]), "past the tensor end"),
    (lambda h: h["tensors"][0].update(shape=[7]), "do not fit shape"),
    (lambda h: h["layers"][0].pop("clusters"), "malformed layer"),
    (lambda h: h.pop("layers"), "lacks model / sections / layers / tensors"),
])
def test_hostile_legacy_headers(edit, match):
    data = (GOLDEN / "legacy_v2.nnc").read_bytes()
    header = header_of(data)
    edit(header)
    with pytest.raises(NncFormatError, match=match):
        parse(with_header(data, header))
