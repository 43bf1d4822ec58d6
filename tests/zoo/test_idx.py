import gzip
import struct

import numpy as np
import pytest

from nncompress.zoo import DataFileError, load_dataset, read_idx
from nncompress.zoo.idx import parse_idx, write_idx


def test_round_trip_plain_and_gzip(tmp_path):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    for name in ("x-idx3-ubyte", "x-idx3-ubyte.gz"):
        write_idx(tmp_path / name, images)
        np.testing.assert_array_equal(read_idx(tmp_path / name, expect_ndim=3), images)


def test_header_layout_matches_the_spec():
    data = struct.pack(">HBBI", 0, 0x08, 1, 3) + bytes([7, 8, 9])
    np.testing.assert_array_equal(parse_idx(data), [7, 8, 9])


def test_missing_file_names_it(tmp_path):
    with pytest.raises(DataFileError, match="nope.gz.*does not exist"):
        read_idx(tmp_path / "nope.gz")


def test_wrong_magic_number(tmp_path):
    (tmp_path / "bad").write_bytes(struct.pack(">HBBI", 0x1234, 0x08, 1, 1) + b"\x00")
    with pytest.raises(DataFileError, match="wrong magic number 0x12340801"):
        read_idx(tmp_path / "bad")


def test_truncated_data(tmp_path):
    write_idx(tmp_path / "t", np.zeros((4, 2, 2), np.uint8))
    (tmp_path / "t").write_bytes((tmp_path / "t").read_bytes()[:-3])
    with pytest.raises(DataFileError, match="truncated"):
        read_idx(tmp_path / "t")


def test_truncated_gzip_stream(tmp_path):
    blob = gzip.compress(struct.pack(">HBBI", 0, 0x08, 1, 1000) + bytes(1000))
    (tmp_path / "t.gz").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataFileError, match="corrupt or truncated"):
        read_idx(tmp_path / "t.gz")


def test_wrong_dimensions(tmp_path):
    write_idx(tmp_path / "labels", np.zeros(5, np.uint8))
    with pytest.raises(DataFileError, match="expected 3 dimensions"):
        read_idx(tmp_path / "labels", expect_ndim=3)


def test_mnist_loader_reads_a_written_folder(tmp_path):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 6), ("t10k", 4)):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 255, (n, 28, 28)))
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, n))
    ds = load_dataset("mnist", tmp_path)
    assert ds.train_x.shape == (6, 1, 28, 28) and ds.test_x.shape == (4, 1, 28, 28)
    assert ds.in_shape == (1, 28, 28)


def test_label_count_mismatch(tmp_path):
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", np.zeros((3, 28, 28), np.uint8))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(2, np.uint8))
    with pytest.raises(DataFileError, match="2 labels for 3 images"):
        load_dataset("mnist-10k", tmp_path)


def test_missing_dataset_without_download_says_how(tmp_path):
    with pytest.raises(DataFileError, match="--download"):
        load_dataset("fashion-mnist", tmp_path)


def test_unknown_dataset_suggests():
    with pytest.raises(ValueError, match="Did you mean 'mnist-10k'"):
        load_dataset("mnist10k")


def test_cifar_binary_archive(tmp_path):
    import io
    import tarfile
    rng = np.random.default_rng(0)
    with tarfile.open(tmp_path / "cifar-10-binary.tar.gz", "w:gz") as tar:
        for name, n in [(f"data_batch_{i}.bin", 2) for i in range(1, 6)] + [("test_batch.bin", 3)]:
            rows = np.concatenate([rng.integers(0, 10, (n, 1)), rng.integers(0, 255, (n, 3072))], 1).astype(np.uint8)
            info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
            info.size = rows.nbytes
            tar.addfile(info, io.BytesIO(rows.tobytes()))
    ds = load_dataset("cifar10", tmp_path)
    assert ds.train_x.shape == (10, 3, 32, 32) and ds.test_x.shape == (3, 3, 32, 32)
