"""Property-based tests (hypothesis) of the decoders (issue 11): for any input the Huffman,
relative-index, codec and container decoders either return a value of the declared size or raise
their one error type (ValueError / NncFormatError), and encode -> decode is the identity."""
import zlib

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nncompress.encode import codecs
from nncompress.encode.container import NncFormatError, NncModel, parse, serialize
from nncompress.encode.huffman import HuffmanStream, huffman_decode, huffman_encode_sorted
from nncompress.encode.sparse import RelativeIndices, decode_relative, encode_relative
from nncompress.parametrize import Encoded
from reliability_util import assemble, nnc_bytes, split

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
symbols = st.lists(st.integers(0, 300), max_size=400).map(lambda v: np.array(v, dtype=np.int64))


@FAST
@given(symbols)
def test_huffman_round_trip(values):
    stream = huffman_encode_sorted(values)
    np.testing.assert_array_equal(huffman_decode(stream), values)


@FAST
@given(st.lists(st.integers(0, 40), max_size=32), st.lists(st.integers(-5, 70), max_size=40),
       st.integers(0, 200), st.binary(max_size=64), st.integers(0, 600))
def test_huffman_decode_of_anything_is_exact_or_a_value_error(count, table, length, payload, n_bits):
    stream = HuffmanStream(count, table, length, n_bits, payload)
    try:
        out = huffman_decode(stream)
    except ValueError:
        return
    assert out.size == length


@FAST
@given(st.lists(st.booleans(), max_size=600), st.integers(1, 12))
def test_relative_indices_round_trip(keep, index_bits):
    flat = np.array(keep, dtype=np.uint8)
    np.testing.assert_array_equal(decode_relative(encode_relative(flat, index_bits)), flat)


@FAST
@given(st.lists(st.integers(-10, 40), max_size=50), st.integers(0, 200))
def test_relative_decode_never_wraps_around(distances, numel):
    d = np.array(distances, dtype=np.int64)
    try:
        flat = decode_relative(RelativeIndices(d, np.ones(len(d), np.uint8), 6, numel, 0))
    except ValueError:
        return
    positions = np.cumsum(d)
    assert flat.size == numel and (d[1:] >= 1).all() and (d[:1] >= 0).all()
    assert flat.sum() == len(np.unique(positions))


arrays = st.one_of(
    st.lists(st.booleans(), max_size=300).map(lambda v: torch.tensor(v, dtype=torch.bool)),
    st.lists(st.integers(-128, 127), max_size=300).map(lambda v: torch.tensor(v, dtype=torch.int8)),
    st.lists(st.integers(-(2**31), 2**31 - 1), max_size=100).map(lambda v: torch.tensor(v, dtype=torch.int64)),
    st.lists(st.floats(width=32, allow_nan=False, allow_infinity=False), max_size=100)
    .map(lambda v: torch.tensor(v, dtype=torch.float32)))


@FAST
@given(arrays)
def test_every_codec_round_trips(values):
    dtype = codecs.DTYPE_NAMES[values.dtype]
    for _, codec, payload in codecs.candidates(values):
        n = codecs.check(codec, dtype, len(payload), values.numel())
        assert torch.equal(codecs.decode(codec, payload, dtype, n), values)


codec_entries = st.fixed_dictionaries({
    "name": st.sampled_from(["raw", "packed", "huffman", "relative", "zip"]),
    "bits": st.integers(-2, 20), "min": st.integers(-300, 300), "length": st.integers(-1, 300),
    "n_bits": st.integers(-1, 900), "index_bits": st.integers(-1, 20),
    "count": st.lists(st.integers(-1, 40), max_size=34), "deltas": st.lists(st.integers(-3, 70), max_size=40)})


@FAST
@given(codec_entries, st.sampled_from(["bool", "int8", "int64", "uint8", "float16"]), st.binary(max_size=120),
       st.integers(0, 300), st.booleans())
def test_codec_check_then_decode_is_exact_or_a_value_error(codec, dtype, payload, numel, sparse):
    try:
        n = codecs.check(codec, dtype, len(payload), numel, sparse)
        out = codecs.decode(codec, payload, dtype, n)
    except ValueError:
        return
    assert out.numel() == n and out.dtype == codecs.DTYPES[dtype]


@FAST
@given(st.lists(arrays, min_size=1, max_size=4))
def test_container_round_trip(tensors):
    nnc = NncModel({"name": "any"}, tensors={f"t{i}": t for i, t in enumerate(tensors)})
    back = parse(serialize(nnc))
    assert all(torch.equal(back.tensors[k], v) for k, v in nnc.tensors.items())


DATA = nnc_bytes()
HEADER, BLOBS = split(DATA)


@FAST
@given(st.data())
def test_mutated_files_with_fixed_checksums_parse_or_raise_nnc_format_error(data):
    """Mutate the header JSON text or a section, then recompute every checksum (CRC-fixing)."""
    import json

    text = bytearray(json.dumps(HEADER).encode())
    blobs = list(BLOBS)
    for _ in range(data.draw(st.integers(1, 4))):
        if data.draw(st.booleans()):
            i = data.draw(st.integers(0, len(text) - 1))
            text[i : i + data.draw(st.integers(0, 3))] = data.draw(st.binary(max_size=4))
        else:
            k = data.draw(st.integers(0, len(blobs) - 1))
            blob = bytearray(blobs[k])
            if blob:
                blob[data.draw(st.integers(0, len(blob) - 1))] = data.draw(st.integers(0, 255))
            blobs[k] = bytes(blob)
    raw = zlib.compress(bytes(text))
    import struct
    file = struct.pack("<4sHHII", b"NNC\x01", 3, 0, len(raw), zlib.crc32(raw)) + raw + b"".join(blobs)
    try:
        parse(file)
    except NncFormatError:
        pass


@FAST
@given(st.sampled_from(range(len(HEADER["tensors"]))), st.sampled_from(["shape", "section", "dtype", "codec"]),
       st.one_of(st.integers(-(2**70), 2**70), st.text(max_size=5), st.none(), st.lists(st.integers(-3, 3), max_size=3),
                 st.floats()))
def test_any_value_in_any_array_field_is_a_format_error_or_parses(index, field, value):
    import copy

    header = copy.deepcopy(HEADER)
    entry = header["tensors"][index]
    target = entry["value"] if "value" in entry else entry["chain"][-1]["tensors"][next(iter(entry["chain"][-1]["tensors"]))]
    target[field] = value
    try:
        file = assemble(header, list(BLOBS))
    except ValueError:  # JSON cannot hold a NaN
        return
    try:
        parse(file)
    except NncFormatError:
        pass
