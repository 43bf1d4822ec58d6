import struct
import zlib

import numpy as np
import pytest
import torch

import nncompress as nc
from nncompress.encode.container import NncFormatError, parse, read_nnc, serialize, write_nnc
from nncompress.encode.deep_compression import decode_model, encode_model, round_biases_fp16_
from nncompress.zoo import build_model

ARCH = {"arch": "lenet5", "in_shape": [1, 8, 8], "num_classes": 10}


@pytest.fixture(scope="module")
def compressed():
    torch.manual_seed(0)
    model = build_model("lenet5", (1, 8, 8), 10).eval()
    nc.prune_(model, nc.MagnitudePrune(sparsity=0.9, scope="global"))
    nc.quantize_(model, nc.KMeansQuant(layer_bits={"conv": 6, "fc": 4}))
    round_biases_fp16_(model)
    nnc, _ = encode_model(model, ARCH)
    return model, nnc, serialize(nnc)


def test_round_trip_is_exact_and_file_size_matches_the_bits(compressed, tmp_path):
    model, nnc, data = compressed
    size = write_nnc(tmp_path / "m.nnc", nnc)
    assert size == len(data) == (tmp_path / "m.nnc").stat().st_size
    decoded = decode_model(read_nnc(tmp_path / "m.nnc"))
    x = torch.randn(8, 1, 8, 8)
    assert torch.equal(decoded(x), model(x))
    header_len = struct.unpack_from("<I", data, 8)[0]
    stream_bytes = sum(-(-s.n_bits // 8) for l in nnc.layers for s in (l.index, l.clusters))  # bits, padded to bytes
    codebooks = sum(4 * len(l.codebook) for l in nnc.layers)
    tensors = sum(a.nbytes for a in nnc.tensors.values())
    assert size == 16 + header_len + stream_bytes + codebooks + tensors


def test_truncated_file(compressed):
    data = compressed[2]
    for cut in (3, 20, len(data) // 2, len(data) - 1):
        with pytest.raises(NncFormatError):
            parse(data[:cut])


def test_every_flipped_byte_is_caught(compressed):
    data = bytearray(compressed[2])
    rng = np.random.default_rng(0)
    positions = [p for p in range(len(data)) if p not in (6, 7)]  # a newer minor version is legal (format.md)
    for position in rng.choice(positions, size=200, replace=False):
        broken = bytearray(data)
        broken[position] ^= 1 << int(rng.integers(8))
        with pytest.raises(NncFormatError):
            decode_model(parse(bytes(broken)))


def test_wrong_version_and_magic(compressed):
    data = bytearray(compressed[2])
    wrong_version = bytes(data[:4]) + struct.pack("<H", 2) + bytes(data[6:])
    with pytest.raises(NncFormatError, match="version 2.0"):
        parse(wrong_version)
    with pytest.raises(NncFormatError, match="magic"):
        parse(b"PK\x03\x04" + bytes(data[4:]))


def test_hostile_header_with_valid_checksums(compressed):
    data = compressed[2]
    header_len = struct.unpack_from("<I", data, 8)[0]
    import json
    header = json.loads(data[16 : 16 + header_len])
    header["sections"][0]["offset"] = 10**12
    raw = json.dumps(header).encode()
    forged = data[:8] + struct.pack("<II", len(raw), zlib.crc32(raw)) + raw + data[16 + header_len :]
    with pytest.raises(NncFormatError, match="outside"):
        parse(forged)
    header["sections"][0]["offset"] = 0
    header["sections"][1]["offset"] = 0
    raw = json.dumps(header).encode()
    forged = data[:8] + struct.pack("<II", len(raw), zlib.crc32(raw)) + raw + data[16 + header_len :]
    with pytest.raises(NncFormatError):
        parse(forged)


def test_missing_file():
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_nnc("/nonexistent/model.nnc")
