"""mnist-holdout: mnist-10k's training images, tested on 5,000 digits of the official training set."""
import numpy as np
import pytest

from nncompress.zoo import DataFileError, load_dataset
from nncompress.zoo.idx import write_idx


def test_holdout_takes_the_last_5000_official_training_digits(tmp_path):
    rng = np.random.default_rng(0)
    train = rng.integers(0, 255, (5003, 28, 28), dtype=np.uint8)
    train_labels = rng.integers(0, 10, 5003)
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", train)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", train_labels)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", rng.integers(0, 255, (8002, 28, 28), dtype=np.uint8))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", rng.integers(0, 10, 8002))
    ds = load_dataset("mnist-holdout", tmp_path)
    assert ds.train_x.shape == (8000, 1, 28, 28) and ds.test_x.shape == (5000, 1, 28, 28)
    assert ds.test_y.tolist() == train_labels[3:].tolist()
    np.testing.assert_allclose(ds.test_x[0, 0].numpy(), (train[3] / 255.0 - 0.1307) / 0.3081, rtol=1e-5, atol=1e-5)


def test_holdout_offline_says_what_is_missing(tmp_path):
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", np.zeros((10, 28, 28), dtype=np.uint8))
    with pytest.raises(DataFileError, match="not available offline.*train-images.*validation split"):
        load_dataset("mnist-holdout", tmp_path)
