"""The context codec for keep masks (encode/context_mask.py, docs/format.md 3.2): the model's integer
probabilities on a hand example, exact round trips, its gain on structured masks, the container's
version and the checks a hostile entry meets before anything is decoded."""
import numpy as np
import pytest
import torch

from nncompress.encode import codecs
from nncompress.encode import context_mask as cm
from nncompress.encode.container import Coding, NncModel, parse, serialize
from nncompress.parametrize import Encoded


def test_hand_example_probabilities():
    """[[1, 0], [1, 1]] (M = 2^15, S = 2^16). Alive rows 1, 1 and columns 1, 1: Laplace's rule gives
    M/2 then 2M/3. Row 0: q = S/2 for both columns, g = S; cell (0, 0): rho = S, P = M/2; cell (0, 1):
    o = 1, e = S/2, rho = S (S + 4S) // (S/2 + 4S) = 72817, P = 72817 * 32768 >> 17 = 18204. Row 1:
    q = (2S//3, S//3) = (43690, 21845), g = S^2 * 2 // (S + S) = S; cell (1, 0): P = 43690 / 2 = 21845;
    cell (1, 1): o = 1, e = 43690, rho = S * 5S // (43690 + 4S) = 70217, P = 70217 * 21845 >> 17 = 11702."""
    bits, p1 = cm._symbols(np.array([[1, 0], [1, 1]], dtype=bool))
    assert bits.tolist() == [1, 1, 1, 1, 1, 0, 1, 1]
    assert p1.tolist() == [16384, 21845, 16384, 21845, 16384, 18204, 21845, 11702]
    payload = cm.encode_mask(np.array([[1, 0], [1, 1]], dtype=bool))
    assert cm.decode_mask(payload, 2, 2).tolist() == [[True, False], [True, True]]


@pytest.mark.parametrize("shape, density", [((1, 1), 1.0), ((3, 7), 0.3), ((5, 1), 0.5), ((1, 9), 0.2),
                                            ((40, 30), 0.0), ((40, 30), 1.0), ((64, 50), 0.05), ((120, 300), 0.02)])
@pytest.mark.parametrize("by", cm.ORIENTATIONS)
def test_random_masks_round_trip_exactly(shape, density, by):
    mask = np.random.default_rng(sum(shape)).random(shape) < density
    payload = cm.encode_mask(mask, by)
    if not cm.fits(*shape, len(payload)):  # a constant mask in a few bytes: over the work bound (the
        with pytest.raises(ValueError, match="symbols per byte"):  # writer stores those bit-packed)
            cm.decode_mask(payload, *shape, by)
        return
    assert np.array_equal(cm.decode_mask(payload, *shape, by), mask)
    assert len(payload) <= cm.ideal_bytes(mask if by == "rows" else mask.T) + 5  # the coder adds ~4 bytes


def structured_mask(seed: int = 0) -> np.ndarray:
    """What magnitude pruning leaves in a first layer: a third of the neurons dead, half of the inputs
    never read (an image's border), the rest at rates from 0.2% to 10% per input."""
    rng = np.random.default_rng(seed)
    rates = np.where(rng.random(800) < 0.5, 0.0, rng.uniform(0.002, 0.1, 800))
    mask = rng.random((500, 800)) < rates
    mask[rng.random(500) < 0.33] = False
    return mask


def test_structured_masks_cost_far_less_than_relative_indices_iid_ones_about_the_same():
    relative = lambda m: min(c[0] for c in codecs.candidates(torch.from_numpy(m))  # noqa: E731
                             if c[1]["name"] == "relative")
    structured = structured_mask()
    _, context = cm.best_orientation(structured)
    assert context < 0.85 * relative(structured)  # 5,197 vs 6,300 bytes
    iid = np.random.default_rng(1).random((500, 800)) < structured.mean()
    assert cm.best_orientation(iid)[1] < 1.03 * relative(iid)


def test_the_writer_uses_the_codec_only_when_asked_and_the_file_is_3_2():
    keep = torch.from_numpy(structured_mask())
    stage = Encoded("mask", {"keep": keep, "values": torch.ones(int(keep.sum()))},
                    {"shape": list(keep.shape), "int_ranges": {"keep": [0, 1]}})
    plain = serialize(NncModel({"arch": "x"}, chains={"fc.weight": [stage]}))
    data = serialize(NncModel({"arch": "x"}, chains={"fc.weight": [stage]}, coding=Coding("context")))
    assert plain[4:8] == bytes([3, 0, 0, 0]) and data[4:8] == bytes([3, 0, 2, 0])  # major 3, minor 0 / 2
    assert len(plain) - len(data) > 1000  # the mask: 5.2 kB instead of 6.3 kB
    stored = parse(data)
    assert stored.storage["fc.weight"][0]["keep"]["codec"]["name"] == "context"
    assert torch.equal(stored.chains["fc.weight"][0].tensors["keep"], keep)
    with pytest.raises(ValueError, match="mask_coding"):
        serialize(NncModel({"arch": "x"}, chains={"fc.weight": [stage]}, coding=Coding("arithmetic")))


def test_one_dimensional_and_constant_masks_keep_their_codecs():
    flat = torch.rand(1000) < 0.1
    assert all(c[1]["name"] != "context" for c in codecs.candidates(flat, entropy=True))
    full = torch.ones(20, 30, dtype=torch.bool)
    assert codecs.encode(full, entropy=True)[0]["name"] == "packed"


GOOD = {"name": "context", "rows": 4, "cols": 5, "by": "rows"}


@pytest.mark.parametrize("change, dtype, payload_len, numel, sparse, match", [
    ({}, "int8", 8, 20, False, "does not apply"),
    ({"rows": 5}, "bool", 8, 20, False, "is not the 20-element"),
    ({"cols": 4}, "bool", 8, 20, False, "is not the 20-element"),
    ({}, "bool", 8, 20, True, "is not the 20-element"),
    ({"by": "diagonal"}, "bool", 8, 20, False, "by='diagonal'"),
    ({}, "bool", 3, 20, False, "4-byte state"),
    ({"rows": 4096, "cols": 4096}, "bool", 8, 4096 * 4096, False, "512 symbols per byte"),
    ({"rows": 0, "cols": 5}, "bool", 8, 0, False, "rows=0"),
])
def test_bad_context_entries_are_refused_before_decoding(change, dtype, payload_len, numel, sparse, match):
    with pytest.raises(ValueError, match=match):
        codecs.check({**GOOD, **change}, dtype, payload_len, numel, sparse)


def test_corrupt_and_short_streams_are_refused():
    mask = structured_mask(2)[:100]
    payload = cm.encode_mask(mask)
    with pytest.raises(ValueError, match="runs out of bytes|corrupt"):
        cm.decode_mask(payload[:-30], *mask.shape)
    with pytest.raises(ValueError, match="corrupt"):
        cm.decode_mask(payload + b"\0", *mask.shape)
    flipped = bytearray(payload)
    flipped[len(payload) // 2] ^= 0x10
    try:
        decoded = cm.decode_mask(bytes(flipped), *mask.shape)
    except ValueError as err:
        assert "context" in str(err)
    else:  # a flip the state check cannot see still decodes to a mask of the declared shape
        assert decoded.shape == mask.shape
    with pytest.raises(ValueError, match="symbols per byte"):
        cm.decode_mask(bytes(8), 10_000, 10_000)


def test_the_work_bound_charges_every_row_and_column():
    """A tall one-column mask of ones codes in a few bytes but costs the decoder a loop per row: the
    bound charges each row and column 64 symbols more, so a padded hostile stream of that shape is
    refused before decoding."""
    tall = np.ones((200_000, 1), dtype=bool)
    payload = cm.encode_mask(tall)
    assert not cm.fits(*tall.shape, len(payload))
    with pytest.raises(ValueError, match="symbols per byte"):
        cm.decode_mask(payload + bytes(500), *tall.shape)
    assert cm.work(3, 4) == 12 + 65 * 7


def test_the_writer_falls_back_to_the_other_orientation_within_the_bound(monkeypatch):
    """Where the smaller orientation's stream is too short for the bound, the other is written."""
    mask = structured_mask()[:60, :200]
    (small, _), (large, _) = cm.orientations(mask)
    lengths = {by: len(cm.encode_mask(mask, by)) for by in cm.ORIENTATIONS}
    assert lengths[small] < lengths[large]
    monkeypatch.setattr(cm, "fits", lambda rows, cols, n: n >= lengths[large])
    assert codecs._context_candidate(torch.from_numpy(mask))[1]["by"] == large
    monkeypatch.setattr(cm, "fits", lambda rows, cols, n: n > lengths[large])
    assert codecs._context_candidate(torch.from_numpy(mask)) is None
