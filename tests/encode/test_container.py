"""Reading .nnc 3.0 files safely: every corrupt or hostile file raises NncFormatError naming what is
wrong, and nothing is allocated from a declared size before it is checked."""
import copy
import json
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from nncompress.encode import layout
from nncompress.encode.container import NncFormatError, NncModel, parse, read_nnc, serialize, write_nnc
from nncompress.encode.model import decode_model, decoded_state
from nncompress.parametrize import Encoded
from test_nnc_golden import GOLDEN, tiny_model

DATA = GOLDEN.read_bytes()


def header_of(data: bytes) -> dict:
    header_len = struct.unpack_from("<I", data, 8)[0]
    return json.loads(zlib.decompress(data[16 : 16 + header_len]))


def with_header(header: dict | bytes, data: bytes = DATA, major: int = 3) -> bytes:
    """`data` with its header replaced (valid checksum), as format `major`.0."""
    raw = header if isinstance(header, bytes) else zlib.compress(json.dumps(header).encode())
    header_len = struct.unpack_from("<I", data, 8)[0]
    return struct.pack("<4sHHII", data[:4], major, 0, len(raw), zlib.crc32(raw)) + raw + data[16 + header_len :]


def edited(edit) -> bytes:
    header = header_of(DATA)
    edit(header)
    return with_header(header)


def array(header: dict, tensor: str, stage: int, name: str) -> dict:
    entry = next(e for e in header["tensors"] if e["name"] == tensor)
    return entry["chain"][stage]["tensors"][name]


def test_write_returns_the_file_size(tmp_path):
    nnc = parse(DATA)
    size = write_nnc(tmp_path / "m.nnc", nnc)
    assert size == (tmp_path / "m.nnc").stat().st_size == len(serialize(nnc))
    assert read_nnc(tmp_path / "m.nnc").sizes == nnc.sizes


def test_truncated_file():
    for cut in (3, 20, len(DATA) // 2, len(DATA) - 1):
        with pytest.raises(NncFormatError):
            parse(DATA[:cut])


def test_every_flipped_byte_is_caught():
    rng = np.random.default_rng(0)
    positions = [p for p in range(len(DATA)) if p not in (6, 7)]  # a newer minor version is legal (format.md)
    for position in rng.choice(positions, size=200, replace=False):
        broken = bytearray(DATA)
        broken[position] ^= 1 << int(rng.integers(8))
        with pytest.raises(NncFormatError):
            decoded_state(parse(bytes(broken)))


def test_wrong_version_and_magic():
    with pytest.raises(NncFormatError, match="version 4.0; this reader understands 1.x, 2.x, 3.x"):
        parse(DATA[:4] + struct.pack("<H", 4) + DATA[6:])
    with pytest.raises(NncFormatError, match="magic"):
        parse(b"PK\x03\x04" + DATA[4:])
    assert parse(DATA[:6] + struct.pack("<H", 7) + DATA[8:]).version == (3, 7)  # a newer minor reads (and says so)


def test_missing_file():
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_nnc("/nonexistent/model.nnc")


def test_header_compression_is_checked(monkeypatch):
    with pytest.raises(NncFormatError, match="does not decompress"):
        parse(with_header(b"not zlib at all"))
    for bad in (b'{"a": ' + b"1" * 5000 + b"}", b"[" * 100_000, b"\xff\xfe", b"[1, 2]"):
        with pytest.raises(NncFormatError, match="not JSON|not a JSON object"):
            parse(with_header(zlib.compress(bad)))
    with pytest.raises(NncFormatError, match="trailing bytes"):
        parse(with_header(zlib.compress(json.dumps(header_of(DATA)).encode()) + b"\0"))
    monkeypatch.setattr(layout, "MAX_HEADER", 10_000)
    with pytest.raises(NncFormatError, match="inflates beyond 10000 bytes"):  # a decompression bomb
        parse(with_header(zlib.compress(b" " * 1_000_000)))


def test_sections_out_of_bounds_overlapping_or_leaving_gaps():
    def move(i, offset):
        return lambda h: h["sections"][i].update(offset=offset)

    with pytest.raises(NncFormatError, match="outside"):
        parse(edited(move(0, 10**12)))
    with pytest.raises(NncFormatError, match="sections '0' and '1' overlap"):
        parse(edited(lambda h: h["sections"][1].update(h["sections"][0])))  # a copy of section 0: CRC fine
    with pytest.raises(NncFormatError, match="offset = -1"):
        parse(edited(move(1, -1)))
    with pytest.raises(NncFormatError, match="no section names"):
        parse(edited(lambda h: h["sections"][-1].update(length=0, crc32=0)))


@pytest.mark.parametrize("edit, match", [
    (lambda h: array(h, "fc2.weight", 1, "scale").update(shape=[24, 2]), "holds 24 elements, the shape has 48"),
    (lambda h: array(h, "fc2.weight", 1, "scale").update(dtype="complex64"), "dtype 'complex64'"),
    (lambda h: array(h, "fc2.weight", 1, "scale").update(shape=[24, -1]), "a dimension = -1"),
    (lambda h: array(h, "fc2.weight", 1, "scale").update(section=99), "section = 99"),
    (lambda h: array(h, "fc2.weight", 1, "scale")["codec"].update(name="zstd"), "unknown codec"),
    (lambda h: array(h, "fc2.weight", 1, "codes")["codec"].update(length=10**6), "length=1000000"),
    (lambda h: array(h, "fc2.weight", 1, "codes")["sparse"].update(mask=[1, "keep"]), "sparse reference"),
    (lambda h: array(h, "fc2.weight", 1, "codes")["sparse"].update(mask=[0, "codes"]), "sparse reference"),
    (lambda h: array(h, "fc2.weight", 1, "codes")["sparse"].update(fill=0.5), "fill 0.5"),
    (lambda h: array(h, "fc1.weight", 1, "indices")["codec"].update(length=127), "128 kept positions"),
    (lambda h: array(h, "fc2.weight", 0, "keep")["codec"].update(index_bits=1), "a table symbol exceeds 2"),
    (lambda h: array(h, "fc2.weight", 0, "keep")["codec"].update(deltas=[0, 1, 2, 0]), "strictly ascending"),
    (lambda h: h["tensors"][1].update(name="fc1.weight"), "needs a new name"),
    (lambda h: h["tensors"][1].update(value={}), "one of chain / value"),
    (lambda h: h["tensors"][1].update(chain=[]), "non-empty list"),
    (lambda h: h["tensors"][1]["chain"][0].update(kind=7), "kind"),
    (lambda h: h.pop("model"), "model object"),
])
def test_hostile_headers_with_valid_checksums(edit, match):
    with pytest.raises(NncFormatError, match=match):
        decoded_state(parse(edited(edit)))


def test_declared_sizes_are_checked_before_anything_is_allocated(monkeypatch):
    def huge(h):  # a 10^12-element mask with no kept position: 0 payload bytes
        h["tensors"][0]["shape"] = [10**6, 10**6]
        array(h, "fc1.weight", 0, "keep").update(shape=[10**6, 10**6])

    start = time.perf_counter()
    with pytest.raises(NncFormatError, match="more than MAX_ELEMENTS"):
        parse(edited(huge))
    assert time.perf_counter() - start < 1
    monkeypatch.setattr(layout, "MAX_ELEMENTS", 2000)  # each tensor fits, all together do not
    with pytest.raises(NncFormatError, match="the tensors hold more than MAX_ELEMENTS = 2000"):
        parse(DATA)


def test_chains_that_do_not_decode_raise_format_errors():
    bad = NncModel({}, chains={"w": [Encoded("kmeans", {"codebook": torch.zeros(2), "indices": torch.tensor([0, 5])},
                                             {})]})
    with pytest.raises(NncFormatError, match="w: its 'kmeans' stage does not decode"):
        decoded_state(bad)
    nnc = parse(DATA)
    nnc.shapes["fc1.weight"] = (16, 32)
    with pytest.raises(NncFormatError, match=r"fc1.weight: decodes to shape \[32, 16\], the file says \[16, 32\]"):
        decoded_state(nnc)


def test_a_zoo_description_that_does_not_fit_is_a_format_error():
    nnc = copy.copy(parse(DATA))
    nnc.model = {"arch": "lenet300", "in_shape": [1, 4, 4], "num_classes": 10}
    with pytest.raises(NncFormatError, match="do not fit a lenet300"):
        decode_model(nnc)
    nnc.model = {"arch": "lenet300"}
    with pytest.raises(NncFormatError, match="incomplete"):
        decode_model(nnc)


def test_meta_that_is_not_json_is_refused_at_write_time(tmp_path):
    nnc = parse(DATA)
    nnc.meta = {"tensor": torch.zeros(1)}
    with pytest.raises(ValueError, match="not JSON"):
        write_nnc(tmp_path / "m.nnc", nnc)
    assert not Path(tmp_path / "m.nnc").exists()


def test_model_is_unchanged_by_encoding():
    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    from nncompress.encode.model import encode_model

    serialize(encode_model(model, {"name": "t"}))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
