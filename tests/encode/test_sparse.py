import numpy as np
import pytest

from nncompress.encode.sparse import (best_index_bits, decode_relative, encode_relative, relative_index_cost, to_csc,
                                      to_csr)


def slide_matrix():
    """Seed 000's 6x6 CSR example: A..M at these (row, col) positions, valued 1..13."""
    positions = [(0, 2), (0, 3), (1, 0), (1, 1), (2, 2), (2, 4), (3, 3), (4, 1), (4, 2), (4, 5), (5, 0), (5, 3), (5, 4)]
    m = np.zeros((6, 6))
    for value, (r, c) in enumerate(positions, start=1):
        m[r, c] = value
    return m


def test_csr_matches_the_slide():
    csr = to_csr(slide_matrix())
    assert csr.pointer.tolist() == [0, 2, 4, 6, 7, 10, 13]
    assert csr.indices.tolist() == [2, 3, 0, 1, 2, 4, 3, 1, 2, 5, 0, 3, 4]
    assert csr.values.tolist() == list(range(1, 14))
    assert csr.storage_numbers == 2 * 13 + 6 + 1
    assert np.array_equal(csr.to_dense(), slide_matrix())


def test_csc_round_trip():
    m = np.random.default_rng(0).normal(size=(7, 5)) * (np.random.default_rng(1).random((7, 5)) > 0.6)
    csc = to_csc(m)
    assert len(csc.pointer) == 6 and np.array_equal(csc.to_dense(), m)


def test_relative_indices_match_the_slide_per_column():
    columns = [[4, 5, 11, 13, 16, 19], [1, 7, 9, 12], [2, 5]]
    expected = [[4, 1, 6, 2, 3, 3], [1, 6, 2, 3], [2, 3]]
    for rows, want in zip(columns, expected):
        col = np.zeros(20)
        col[rows] = 1.0
        encoded = encode_relative(col, 4)
        assert encoded.distances.tolist() == want and encoded.fillers == 0
        assert np.array_equal(decode_relative(encoded), col)


def test_fillers_bridge_gaps_wider_than_the_code():
    flat = np.zeros(40)
    flat[[0, 20]] = [5.0, 7.0]
    encoded = encode_relative(flat, 3)  # largest distance 7: 0 -> 7 -> 14 -> 20
    assert encoded.distances.tolist() == [0, 7, 7, 6]
    assert encoded.values.tolist() == [5.0, 0.0, 0.0, 7.0] and encoded.fillers == 2
    assert np.array_equal(decode_relative(encoded), flat)
    assert relative_index_cost(flat, 3, 8) == {"index_bits": 3, "entries": 4, "fillers": 2,
                                              "filler_overhead": 1.0, "bits": 4 * 11}


@pytest.mark.parametrize("density", [0.01, 0.1, 0.5])
def test_random_round_trip_and_best_width(density):
    rng = np.random.default_rng(3)
    flat = rng.normal(size=5000) * (rng.random(5000) < density)
    for bits in (1, 2, 4, 8):
        assert np.array_equal(decode_relative(encode_relative(flat, bits)), flat)
    best = best_index_bits(flat, 5)
    assert best["bits"] == min(relative_index_cost(flat, b, 5)["bits"] for b in range(1, 17))


def test_corrupt_relative_indices_are_rejected():
    encoded = encode_relative(np.array([0.0, 1.0]), 4)
    broken = type(encoded)(encoded.distances + 5, encoded.values, 4, 2, 0)
    with pytest.raises(ValueError, match="past the tensor end"):
        decode_relative(broken)
