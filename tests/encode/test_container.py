import json
import struct
import zlib

import numpy as np
import pytest
import torch

import nncompress as nc
from nncompress.encode.container import NncFormatError, parse, read_nnc, serialize, write_nnc
from nncompress.encode.deep_compression import decode_model, encode_model, round_biases_fp16_, round_codebooks_fp16_
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
    codebooks = sum(l.codebook.nbytes for l in nnc.layers)
    tensors = sum(a.nbytes for a in nnc.tensors.values())
    assert size == 16 + header_len + stream_bytes + codebooks + tensors


def test_codebooks_rounded_to_fp16_are_stored_in_2_bytes_and_decode_exactly(compressed):
    import copy

    model, nnc, data = compressed
    assert any(l.codebook.dtype == np.float32 for l in nnc.layers)  # k-means centroids: float16 would be lossy
    model = copy.deepcopy(model)
    round_codebooks_fp16_(model)
    nnc16, _ = encode_model(model, ARCH)
    data16 = serialize(nnc16)
    assert all(l.codebook.dtype == np.float16 for l in nnc16.layers)
    assert len(data) - len(data16) >= sum(2 * len(l.codebook) for l in nnc16.layers) - 64  # header may differ a little
    x = torch.randn(8, 1, 8, 8)
    assert torch.equal(decode_model(parse(data16))(x), model(x))


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
    wrong_version = bytes(data[:4]) + struct.pack("<H", 3) + bytes(data[6:])
    with pytest.raises(NncFormatError, match="version 3.0; this reader understands 1.x and 2.x"):
        parse(wrong_version)
    with pytest.raises(NncFormatError, match="magic"):
        parse(b"PK\x03\x04" + bytes(data[4:]))


def header_of(data: bytes) -> dict:
    header_len = struct.unpack_from("<I", data, 8)[0]
    return json.loads(zlib.decompress(data[16 : 16 + header_len]))


def with_header(data: bytes, raw: bytes, major: int = 2) -> bytes:
    """`data` with its header bytes replaced by `raw` (valid checksum, format `major`.0)."""
    header_len = struct.unpack_from("<I", data, 8)[0]
    preamble = struct.pack("<4sHHII", data[:4], major, 0, len(raw), zlib.crc32(raw))
    return preamble + raw + data[16 + header_len :]


def test_version_1_files_with_a_plain_json_header_still_read(compressed):
    model, _, data = compressed
    v1 = with_header(data, json.dumps(header_of(data)).encode(), major=1)
    x = torch.randn(4, 1, 8, 8)
    assert torch.equal(decode_model(parse(v1))(x), model(x))
    assert len(v1) > len(data)  # what version 2 saves


def test_hostile_header_with_valid_checksums(compressed, monkeypatch):
    data = compressed[2]
    header = header_of(data)
    header["sections"][0]["offset"] = 10**12
    with pytest.raises(NncFormatError, match="outside"):
        parse(with_header(data, zlib.compress(json.dumps(header).encode())))
    header["sections"][0]["offset"] = 0
    header["sections"][1]["offset"] = 0
    with pytest.raises(NncFormatError):
        parse(with_header(data, zlib.compress(json.dumps(header).encode())))
    header = header_of(data)
    header["layers"][0]["codebook_dtype"] = "float64"
    with pytest.raises(NncFormatError, match="codebook_dtype 'float64'"):
        parse(with_header(data, zlib.compress(json.dumps(header).encode())))
    with pytest.raises(NncFormatError, match="does not decompress"):
        parse(with_header(data, b"not zlib at all"))
    with pytest.raises(NncFormatError, match="trailing bytes"):
        parse(with_header(data, zlib.compress(json.dumps(header_of(data)).encode()) + b"\0"))
    monkeypatch.setattr("nncompress.encode.container.MAX_HEADER", 10_000)
    with pytest.raises(NncFormatError, match="inflates beyond 10000 bytes"):  # a decompression bomb
        parse(with_header(data, zlib.compress(b" " * 1_000_000)))


def test_missing_file():
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_nnc("/nonexistent/model.nnc")
