import numpy as np
import pytest

from nncompress.encode.huffman import entropy_bits, huffman_decode, huffman_encode


@pytest.mark.parametrize("values", [np.array([3, 3, 3]), np.arange(100) % 7,
                                    np.random.default_rng(0).geometric(0.2, 20000), np.zeros(0, dtype=int)])
def test_round_trip(values):
    assert np.array_equal(huffman_decode(huffman_encode(values)), values)


def test_close_to_entropy_on_skewed_data():
    values = np.random.default_rng(1).geometric(0.3, 100_000)
    stream = huffman_encode(values)
    assert entropy_bits(values) <= stream.bits_per_symbol < entropy_bits(values) * 1.03


def test_corrupt_stream_is_an_error():
    stream = huffman_encode(np.arange(50) % 5)
    short = type(stream)(stream.count, stream.symbols, stream.length + 5, stream.n_bits, stream.payload)
    with pytest.raises(ValueError, match="expected 55"):
        huffman_decode(short)
    with pytest.raises(ValueError, match="non-negative"):
        huffman_encode(np.array([-1, 2]))
