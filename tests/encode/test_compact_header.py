"""The compact header (.nnc 3.3, docs/format.md "Compact header"): a zlib stream from the format's
preset dictionary and a section table of lengths under one CRC-32. Exact round trips, the bytes it
saves on a LeNet-5 file, the dictionary's identity, byte shares that add up, and the checks a
damaged or hostile file meets."""
import hashlib
import json
import struct
import zlib

import pytest
import torch

from nncompress.api import apply_
from nncompress.encode import header_dictionary
from nncompress.encode.container import Coding, NncModel, parse, serialize
from nncompress.encode.layout import NncFormatError
from nncompress.encode.model import decode_model, encode_model
from nncompress.prune.unstructured import MagnitudePrune
from nncompress.quant.kmeans import KMeansQuant
from nncompress.zoo import build_model

#: the dictionary's Adler-32, as docs/format.md states it (a changed dictionary is a new format)
SPEC_ADLER32 = 0x3E7A3B22
SPEC_SHA256 = "7b6e6184c8bac7aa39d837921a78dce341fa71e12bf05153ccaf8b7cde6f6359"


def lenet5_file(coding: Coding) -> tuple[torch.nn.Module, bytes]:
    torch.manual_seed(0)
    model = build_model("lenet5", (1, 28, 28), 10)
    apply_(model, MagnitudePrune(sparsity=0.98, layer_sparsity={"conv1": 0.3, "fc2": 0.6}))
    apply_(model, KMeansQuant(bits=2, layer_bits={"conv1": 4}))
    desc = {"arch": "lenet5", "in_shape": [1, 28, 28], "num_classes": 10}
    return model, serialize(encode_model(model, desc, {"dataset": "mnist-10k", "seed": 0}, coding))


def split(data: bytes) -> tuple[int, int, dict, bytes]:
    """(major, minor, header object, data area) of a 3.x file."""
    _, major, minor, length, _ = struct.unpack_from("<4sHHII", data)
    inflater = zlib.decompressobj(zdict=header_dictionary.DICTIONARY)
    return major, minor, json.loads(inflater.decompress(data[16:16 + length])), data[16 + length:]


def rebuilt(header: dict, area: bytes, minor: int = 3, dictionary: bytes | None = header_dictionary.DICTIONARY) -> bytes:
    compressor = zlib.compressobj(9, zdict=dictionary) if dictionary else zlib.compressobj(9)
    raw = compressor.compress(json.dumps(header).encode()) + compressor.flush()
    return struct.pack("<4sHHII", b"NNC\x01", 3, minor, len(raw), zlib.crc32(raw)) + raw + area


def _synthetic_headers() -> list[dict]:
    """Headers of three small synthetic models, least common chains first: int8 PTQ, Deep Compression
    with context masks and 8-bit bias codes, Deep Compression with relative masks and float16 biases."""
    from torch import nn

    from nncompress.config import Context, run_method
    from nncompress.encode.container import serialize_header
    from nncompress.encode.deep_compression import quantize_biases_, round_biases_fp16_, round_codebooks_fp16_
    from nncompress.quant.ptq import LinearQuant

    torch.manual_seed(0)
    ptq = nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 4 * 4, 7))
    run_method(ptq, LinearQuant(weight_bits=8, act_bits=None, granularity="channel"), Context())
    cnn = nn.Sequential(nn.Conv2d(2, 12, 3), nn.BatchNorm2d(12), nn.ReLU(), nn.Flatten(), nn.Linear(12 * 6 * 6, 24),
                        nn.ReLU(), nn.Linear(24, 7))
    mlp = nn.Sequential(nn.Linear(96, 48), nn.ReLU(), nn.Linear(48, 24), nn.ReLU(), nn.Linear(24, 7))
    for model, bias_bits in ((cnn, 8), (mlp, None)):
        run_method(model, MagnitudePrune(sparsity=0.9), Context())
        run_method(model, KMeansQuant(bits=3), Context())
        round_biases_fp16_(model)
        round_codebooks_fp16_(model)
        if bias_bits:
            quantize_biases_(model, bias_bits)
    desc = {"arch": "net", "in_shape": [1, 8, 8], "num_classes": 7}
    meta = {"dataset": "data", "bits": {"conv": 3, "fc": 3}, "seed": 0}
    return [serialize_header(encode_model(ptq, desc, meta)),
            serialize_header(encode_model(cnn, desc, {**meta, "bias_bits": 8}, Coding("context"))),
            serialize_header(encode_model(mlp, desc, meta))]


def build_dictionary() -> bytes:
    """How encode/header.dict was made: each synthetic header's compact JSON without its `sections`
    (their lengths and CRCs are noise to any other file), concatenated."""
    from nncompress.encode.layout import compact_json

    return b"".join(compact_json({k: v for k, v in h.items() if k != "sections"}).encode() for h in _synthetic_headers())


def test_the_dictionary_is_the_spec_s_and_is_made_again_exactly():
    assert header_dictionary.DICTIONARY_ADLER32 == SPEC_ADLER32 == zlib.adler32(header_dictionary.DICTIONARY)
    assert build_dictionary() == header_dictionary.DICTIONARY
    assert hashlib.sha256(header_dictionary.DICTIONARY).hexdigest() == SPEC_SHA256


@pytest.mark.parametrize("masks", ["relative", "context"])
def test_compact_files_decode_bit_for_bit_and_are_smaller(masks):
    model, plain = lenet5_file(Coding(masks))
    _, compact = lenet5_file(Coding(masks, "compact"))
    header_bytes = lambda data: struct.unpack_from("<I", data, 8)[0]  # noqa: E731
    assert len(plain) - len(compact) == header_bytes(plain) - header_bytes(compact) >= 400
    assert header_bytes(compact) < 0.55 * header_bytes(plain)  # here 845 -> 416 B with relative masks
    _, _, plain_header, plain_area = split(plain)
    major, minor, header, area = split(compact)
    assert (major, minor) == (3, 3) and area == plain_area  # the same sections, in the same order
    assert header["sections"] == [s["length"] for s in plain_header["sections"]] and header["crc32"] == zlib.crc32(area)
    decoded = decode_model(parse(compact)).state_dict()
    assert all(torch.equal(decoded[k], v) for k, v in decode_model(parse(plain)).state_dict().items())
    x = torch.randn(8, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(decode_model(parse(compact))(x), model.eval()(x))


def test_byte_shares_are_each_tensor_s_sections_plus_a_share_of_the_header():
    """Each tensor's share is its sections' bytes (the same as in the 3.0 file) plus a part of the
    header; the parts are smaller than with the 3.0 header, and the shares add up to the file."""
    _, plain = lenet5_file(Coding("context"))
    _, data = lenet5_file(Coding("context", "compact"))
    compact_shares, plain_shares = parse(data).sizes, parse(plain).sizes
    _, _, header, _ = split(data)
    for entry in header["tensors"]:
        arrays = [entry["value"]] if "value" in entry else [a for s in entry["chain"] for a in s["tensors"].values()]
        sections = sum(header["sections"][a["section"]] for a in arrays)
        name = entry["name"]
        assert sections < compact_shares[name] < plain_shares[name], name
    assert sum(compact_shares.values()) == len(data)


def test_the_default_writer_is_unchanged():
    """Without the option a file is 3.0 with the 3.0 section table (every recorded figure holds)."""
    _, data = lenet5_file(Coding())
    major, minor, header, _ = split(data)
    assert (major, minor) == (3, 0) and all(set(s) == {"offset", "length", "crc32"} for s in header["sections"])
    assert zlib.decompress(data[16:16 + struct.unpack_from("<I", data, 8)[0]])  # no dictionary needed


def test_an_empty_model_round_trips():
    data = serialize(NncModel({"arch": "x"}, coding=Coding(header="compact")))
    assert parse(data).chains == {} and split(data)[2]["sections"] == []


def test_damage_and_hostile_tables_are_refused():
    _, data = lenet5_file(Coding(header="compact"))
    _, _, header, area = split(data)
    assert parse(rebuilt(header, area)).chains  # the helpers rebuild a valid file
    with pytest.raises(NncFormatError, match="data area checksum mismatch"):
        parse(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(NncFormatError, match="add up to .* the data area holds"):
        parse(rebuilt(header, area[:-1]))
    with pytest.raises(NncFormatError, match="data area crc32"):
        parse(rebuilt({**header, "crc32": "0"}, area))
    mixed = {**header, "sections": [header["sections"][0], {"offset": 0, "length": 1, "crc32": 0}]}
    with pytest.raises(NncFormatError, match="section 1 length .a compact table lists lengths"):
        parse(rebuilt(mixed, area))
    with pytest.raises(NncFormatError, match="section 0 length"):
        parse(rebuilt({**header, "sections": [len(area) + 1, -1]}, area))
    with pytest.raises(NncFormatError, match="does not decompress"):  # another dictionary
        parse(rebuilt(header, area, dictionary=b"some other dictionary"))


def test_a_compact_table_needs_3_3_and_names_itself():
    """The top-level crc32 names the compact table: refused below 3.3 (with or without the
    dictionary), and a table of lengths without it is refused by name, as is a 3.0 table of
    objects next to a crc32."""
    _, data = lenet5_file(Coding(header="compact"))
    _, _, header, area = split(data)
    for dictionary in (None, header_dictionary.DICTIONARY):
        with pytest.raises(NncFormatError, match="needs format 3.3|does not decompress"):
            parse(rebuilt(header, area, minor=2, dictionary=dictionary))
    with pytest.raises(NncFormatError, match="section entry 0 = .* is not an object"):
        parse(rebuilt({k: v for k, v in header.items() if k != "crc32"}, area))
    _, plain = lenet5_file(Coding())
    _, _, plain_header, plain_area = split(plain)
    with pytest.raises(NncFormatError, match="section 0 length"):
        parse(rebuilt({**plain_header, "crc32": zlib.crc32(plain_area)}, plain_area))


def test_a_short_header_cannot_declare_millions_of_sections():
    """Zero-length sections compress to almost nothing: a compact table may list at most one section
    per array the header names, so a few kB cannot make the reader build millions of slices."""
    _, data = lenet5_file(Coding(header="compact"))
    _, _, header, area = split(data)
    bomb = {**header, "sections": header["sections"] + [0] * 1_000_000}
    with pytest.raises(NncFormatError, match="1000016 sections, more than the 16 arrays the header names"):
        parse(rebuilt(bomb, area))


def test_two_arrays_cannot_share_a_section():
    """Each section belongs to one array (else the byte shares would count it twice), either form."""
    for coding in (Coding(), Coding(header="compact")):
        _, data = lenet5_file(coding)
        _, _, header, area = split(data)
        entry = next(e for e in header["tensors"] if "chain" in e)
        stage = entry["chain"][-1]["tensors"]
        stage["codebook"]["section"] = entry["chain"][0]["tensors"]["keep"]["section"]
        with pytest.raises(NncFormatError, match="already holds another array"):
            compact = coding.header == "compact"
            parse(rebuilt(header, area, minor=3 if compact else 0,
                          dictionary=header_dictionary.DICTIONARY if compact else None))


def test_a_reader_without_the_dictionary_refuses_the_header():
    """A 3.0-3.2 reader inflates without a dictionary (as this reader does for a file that says 3.2):
    zlib stops at the stream's DICTID, a clean refusal, never a misread."""
    _, data = lenet5_file(Coding(header="compact"))
    with pytest.raises(zlib.error):
        zlib.decompress(data[16:16 + struct.unpack_from("<I", data, 8)[0]])
    with pytest.raises(NncFormatError, match="does not decompress"):
        parse(data[:6] + struct.pack("<H", 2) + data[8:])


def test_a_coding_is_checked_when_made():
    with pytest.raises(ValueError, match="header_coding='brotli'"):
        Coding(header="brotli")
    with pytest.raises(TypeError, match="must be a Coding"):
        NncModel({"arch": "x"}, coding="context")
