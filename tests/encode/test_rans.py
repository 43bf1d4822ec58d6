"""The rANS codec (encode/rans.py, codec 'rans' in codecs.py): exact round trips, a stream within a
few bytes of its ideal length sum -log2 p, and refusals of hostile entries before decoding."""
import math

import numpy as np
import pytest
import torch

from nncompress.encode import codecs
from nncompress.encode.container import parse, serialize
from nncompress.encode.layout import NncModel
from nncompress.encode.rans import ideal_bits, quantize_freqs, rans_decode, rans_encode
from nncompress.parametrize import Encoded


@pytest.mark.parametrize("seed, alphabet, skew", [(0, 2, 0.5), (1, 17, 0.9), (2, 300, 0.0), (3, 5, 0.99)])
def test_random_symbols_round_trip_exactly(seed, alphabet, skew):
    rng = np.random.default_rng(seed)
    symbols = rng.integers(0, alphabet, 20_000)
    symbols[rng.random(symbols.size) < skew] = 0
    counts = np.bincount(symbols, minlength=alphabet)
    for prob_bits in (max(2, math.ceil(math.log2(alphabet)) + 2), 16):
        freq = quantize_freqs(counts, prob_bits)
        assert freq.sum() == 1 << prob_bits and (freq[counts > 0] >= 1).all() and (freq[counts == 0] == 0).all()
        payload = rans_encode(symbols, freq, prob_bits)
        assert np.array_equal(rans_decode(payload, freq.tolist(), prob_bits, symbols.size), symbols)


def test_hand_example_costs_its_information_content_plus_the_state():
    """Table 12/16, 2/16, 2/16: a 0 costs -log2(3/4) = 0.415 bits, a 1 or 2 costs 3 bits. 800 zeros,
    100 ones, 100 twos: 800 x 0.41504 + 200 x 3 = 932.03 bits = 116.5 bytes (Huffman: >= 1000 bits)."""
    symbols = np.array([0] * 800 + [1] * 100 + [2] * 100)
    np.random.default_rng(0).shuffle(symbols)
    freq = np.array([12, 2, 2])
    ideal = ideal_bits(np.bincount(symbols), freq, 4)
    assert ideal == pytest.approx(800 * math.log2(16 / 12) + 200 * 3, abs=1e-9)
    assert ideal == pytest.approx(932.03, abs=0.01)
    payload = rans_encode(symbols, freq, 4)
    assert math.ceil(ideal / 8) <= len(payload) <= math.ceil(ideal / 8) + 4  # 117..121 bytes
    assert np.array_equal(rans_decode(payload, freq.tolist(), 4, 1000), symbols)


def test_the_codec_is_tried_only_for_entropy_coded_arrays_and_round_trips():
    rng = np.random.default_rng(0)
    latents = torch.from_numpy(np.round(rng.laplace(0, 0.3, 50_000))).to(torch.int32)  # ~88% zeros
    plain, _ = codecs.encode(latents)
    codec, payload = codecs.encode(latents, entropy=True)
    assert plain["name"] == "huffman" and codec["name"] == "rans"
    q = latents.numpy().astype(np.int64)
    counts = np.bincount(q - q.min())
    entropy = -(counts[counts > 0] * np.log2(counts[counts > 0] / q.size)).sum() / 8
    assert len(payload) <= entropy * 1.002 + 8  # within 0.2% + the state of the empirical entropy
    n = codecs.check(codec, "int32", len(payload), latents.numel())
    assert torch.equal(codecs.decode(codec, payload, "int32", n), latents)


def test_a_file_with_rans_arrays_is_version_3_1_and_decodes_exactly():
    indices = torch.tensor(([0] * 90 + [1, 3, 2, 0, 0, 3, 0, 2, 0, 1]) * 20).reshape(40, 50)
    meta = {"shape": [40, 50], "bits": 2}
    stage = Encoded("kmeans", {"codebook": torch.tensor([0.0, 0.5, -0.5, 1.0]), "indices": indices}, meta)
    plain = serialize(NncModel({"arch": "x"}, chains={"fc.weight": [stage]}))
    stage.meta = {**meta, "entropy_coded": ["indices"]}
    data = serialize(NncModel({"arch": "x"}, chains={"fc.weight": [stage]}))
    assert plain[4:8] == bytes([3, 0, 0, 0]) and data[4:8] == bytes([3, 0, 1, 0])  # major 3, minor 0 / 1
    assert len(data) < len(plain) - 150  # 0.63 bits per index instead of Huffman's >= 1
    assert torch.equal(parse(data).chains["fc.weight"][0].tensors["indices"], indices)


GOOD = {"name": "rans", "min": -1, "length": 4, "prob_bits": 2, "freq": [1, 2, 1]}


@pytest.mark.parametrize("change, dtype, payload_len, numel, match", [
    ({"freq": [1, 2, 2]}, "int8", 4, 4, "summing to 2\\^2"),
    ({"freq": []}, "int8", 4, 4, "freq must list"),
    ({"min": 126}, "int8", 4, 4, "int8 maximum"),
    ({"length": 5}, "int8", 4, 4, "length=5"),
    ({"length": 4}, "int8", 3, 4, "4-byte state"),
    ({"length": 0}, "int8", 4, 4, "4 payload bytes for 0 symbols"),
    ({"prob_bits": 17}, "int8", 4, 4, "prob_bits=17"),
    ({"freq": [4]}, "int8", 4, 4, "whole table"),  # one symbol: the stream would read no byte per step
    ({"length": 2049}, "int8", 4, 10**8, "2049 symbols from 4 payload bytes"),  # > 512 symbols per byte
    ({}, "bool", 4, 4, "does not apply"),
    ({}, "float32", 4, 4, "does not apply"),
])
def test_bad_rans_entries_are_refused_before_decoding(change, dtype, payload_len, numel, match):
    with pytest.raises(ValueError, match=match):
        codecs.check({**GOOD, **change}, dtype, payload_len, numel)


def test_corrupt_streams_are_refused():
    symbols = np.random.default_rng(1).integers(0, 3, 2000)
    freq = quantize_freqs(np.bincount(symbols), 8)
    payload = rans_encode(symbols, freq, 8)
    with pytest.raises(ValueError, match="runs out of bytes"):
        rans_decode(payload[:-20], freq.tolist(), 8, 2000)
    with pytest.raises(ValueError, match="corrupt"):
        rans_decode(payload[:10] + bytes([payload[10] ^ 0x40]) + payload[11:], freq.tolist(), 8, 2000)
    with pytest.raises(ValueError, match="corrupt"):
        rans_decode(payload, freq.tolist(), 8, 1999)  # a stream with bytes left over


def test_a_tiny_hostile_stream_cannot_ask_for_millions_of_steps():
    """A 4-byte stream whose table gives one symbol all of M never reads a byte: without the
    symbols-per-byte bound, a 200-byte file asked for 67M decoding steps (15 s, 1.3 GB)."""
    with pytest.raises(ValueError, match="below 2\\^16"):
        rans_decode(bytes([0, 0x80, 0, 0]), [1 << 16], 16, 67_000_000)
    with pytest.raises(ValueError, match="at most 512 symbols per byte"):
        rans_decode(bytes([0, 0x80, 0, 0]), [(1 << 16) - 1, 1], 16, 67_000_000)


def test_streams_too_skewed_for_the_bound_are_left_to_the_other_codecs():
    values = torch.zeros(100_000, dtype=torch.int8)
    values[::5000] = 1  # 0.0003 bits per symbol: far below 1/64 bit
    found = [codec["name"] for _, codec, _ in codecs.candidates(values, entropy=True)]
    assert "rans" not in found and found  # the packed / Huffman codecs still apply
    assert "rans" not in [c["name"] for _, c, _ in codecs.candidates(torch.zeros(64, dtype=torch.int8), entropy=True)]
