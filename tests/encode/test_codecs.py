import numpy as np
import pytest
import torch

from nncompress.encode import codecs


def round_trip(values: torch.Tensor) -> tuple[dict, bytes]:
    codec, payload = codecs.encode(values)
    dtype = codecs.DTYPE_NAMES[values.dtype]
    n = codecs.check(codec, dtype, len(payload), values.numel())
    decoded = codecs.decode(codec, payload, dtype, n)
    values = values.flatten()
    assert decoded.dtype == values.dtype
    if values.is_floating_point():
        assert torch.equal(decoded.view(torch.uint8), values.view(torch.uint8)) if values.element_size() == 1 \
            else torch.equal(decoded, values)
    else:
        assert torch.equal(decoded, values)
    return codec, payload


def test_packed_layout_is_msb_first_offset_by_the_minimum():
    assert codecs.pack(np.array([1, 2, 3]), 2) == bytes([0b01_10_11_00])
    codec, payload = codecs.encode(torch.tensor([-7, 7, 0, 1, -7, -7, -7, -6], dtype=torch.int8))
    assert codec == {"name": "packed", "bits": 4, "min": -7, "length": 8}
    assert payload == bytes([0x0E, 0x78, 0x00, 0x01])  # 0, 14 | 7, 8 | 0, 0 | 0, 1


def test_int4_codes_take_half_a_byte_and_constants_none():
    codes = torch.randint(-7, 8, (1000,), generator=torch.Generator().manual_seed(0), dtype=torch.int64)
    codec, payload = round_trip(codes.to(torch.int8))
    assert codec["name"] == "packed" and codec["bits"] == 4 and len(payload) == 500  # 8x less than float32
    codec, payload = round_trip(torch.zeros(24, 1, dtype=torch.int32))  # a symmetric zero point
    assert codec == {"name": "packed", "bits": 0, "min": 0, "length": 24} and payload == b""


def test_skewed_integers_are_huffman_coded_below_their_fixed_width():
    rng = np.random.default_rng(0)
    skewed = torch.from_numpy(rng.choice(16, size=4000, p=[0.5] + [0.5 / 15] * 15)).long() - 1  # k-means indices
    codec, payload = round_trip(skewed)
    assert codec["name"] == "huffman" and codec["min"] == -1
    assert len(payload) < 4000 * 4 / 8 * 0.8


def test_floats_are_stored_in_the_narrowest_lossless_type():
    x = torch.randn(100, generator=torch.Generator().manual_seed(0))
    assert round_trip(x)[0] == {"name": "raw"} and len(round_trip(x)[1]) == 400
    codec, payload = round_trip(x.half().float())
    assert codec == {"name": "raw", "as": "float16"} and len(payload) == 200
    codec, payload = round_trip((x * 1e6).bfloat16().float())  # beyond float16's range
    assert codec == {"name": "raw", "as": "bfloat16"} and len(payload) == 200
    assert round_trip(x.to(torch.float8_e4m3fn))[0] == {"name": "raw"}


def test_sparse_keep_masks_use_relative_indices_dense_ones_a_bitmap():
    keep = torch.rand(20000, generator=torch.Generator().manual_seed(0)) < 0.08
    codec, payload = round_trip(keep)
    assert codec["name"] == "relative" and 2 <= codec["index_bits"] <= 12
    assert len(payload) < 20000 / 8 / 2  # under half the bitmap
    codec, payload = round_trip(torch.rand(1000, generator=torch.Generator().manual_seed(1)) < 0.5)
    assert codec["name"] == "packed" and codec["bits"] == 1 and len(payload) == 125
    assert round_trip(torch.zeros(50, dtype=torch.bool))[1] == b""


def test_relative_symbols_follow_han_fig_2_with_filler_zeros():
    keep = np.zeros(11, dtype=bool)
    keep[[1, 10]] = True
    symbols = codecs.relative_symbols(keep, 2)  # largest distance 3
    assert symbols.tolist() == [2, 0, 0, 3]  # 2 from -1; 9 = two fillers (3 + 3) + 3
    assert codecs.relative_positions(symbols, 2, 11).tolist() == keep.tolist()


def test_every_integer_dtype_and_empty_arrays_round_trip():
    g = torch.Generator().manual_seed(0)
    for dtype in (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64):
        info = torch.iinfo(dtype)
        round_trip(torch.randint(max(info.min, -1000), min(info.max, 1000), (300,), generator=g).to(dtype))
        round_trip(torch.tensor([info.min, info.max], dtype=dtype))
        assert round_trip(torch.zeros(0, dtype=dtype)) == ({"name": "raw"}, b"")


@pytest.mark.parametrize("codec, dtype, payload_len, numel, match", [
    ({"name": "raw"}, "float32", 10, 2, "whole number"),
    ({"name": "raw"}, "float32", 12, 2, "holds 3 elements, the shape has 2"),
    ({"name": "raw", "as": "float64"}, "int32", 8, 2, "cannot be stored raw"),
    ({"name": "packed", "bits": 4, "min": 0, "length": 10}, "int8", 4, 10, "do not hold exactly 10"),
    ({"name": "packed", "bits": 17, "min": 0, "length": 10}, "int8", 22, 10, "bits=17"),
    ({"name": "packed", "bits": 4, "min": 300, "length": 2}, "int8", 1, 2, "min=300"),
    ({"name": "huffman", "min": 0, "length": 9, "n_bits": 8, "count": [0, 2], "deltas": [0, 1]}, "int64", 1, 9,
     "length=9"),
    ({"name": "huffman", "min": 0, "length": 4, "n_bits": 8, "count": [0, 2], "deltas": [0, 1]}, "int64", 5, 4,
     "5 payload bytes for 8 bits"),
    ({"name": "huffman", "min": 0, "length": 4, "n_bits": 8, "count": [0, 3], "deltas": [0, 1]}, "int64", 1, 4,
     "2 symbols for 3 codes"),
    ({"name": "huffman", "min": 0, "length": 2, "n_bits": 2, "count": [0, 2], "deltas": [0, 1]}, "float32", 1, 2,
     "does not apply"),
    ({"name": "relative", "index_bits": 4, "length": 2, "n_bits": 2, "count": [0, 2], "deltas": [0, 1]}, "int8", 1, 8,
     "does not apply"),
    ({"name": "relative", "index_bits": 4, "length": 9, "n_bits": 9, "count": [0, 2], "deltas": [0, 1]}, "bool", 2, 8,
     "9 entries for 8 positions"),
    ({"name": "zstd"}, "int8", 1, 1, "unknown codec"),
])
def test_bad_codec_entries_are_refused_before_decoding(codec, dtype, payload_len, numel, match):
    with pytest.raises(ValueError, match=match):
        codecs.check(codec, dtype, payload_len, numel)


def test_decoded_values_outside_the_dtype_range_are_refused():
    codec = {"name": "packed", "bits": 8, "min": 0, "length": 1}
    assert codecs.check(codec, "int8", 1, 1) == 1
    with pytest.raises(ValueError, match="outside the int8 range"):
        codecs.decode(codec, bytes([200]), "int8", 1)
    with pytest.raises(ValueError, match="bytes other than 0 and 1"):
        codecs.decode({"name": "raw"}, bytes([2]), "bool", 1)
