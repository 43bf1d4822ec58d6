"""Defect classes 8 and 9 (issue 11): the CLI validates every input before any work starts, IDX
labels are checked, and atomic writes clean up after killed writers, respect the umask and fsync."""
import gzip
import os
import struct
import time

import numpy as np
import pytest

from nncompress import fileio
from nncompress.fileio import atomic_write_text
from nncompress.zoo import DataFileError, load_dataset
from nncompress.zoo.idx import write_idx



@pytest.mark.parametrize("args, message", [
    (("deep-compress", "lenet300", "--prune-sparsity", "-0.5"), "--prune-sparsity=-0.5 is outside the allowed range"),
    (("deep-compress", "lenet300", "--bits", "conv=99"), "layer_bits['type:Conv1d|Conv2d|Conv3d']=99 must be"),
    (("sensitivity", "lenet300", "--budget", "-1"), "--budget=-1.0 is outside the allowed range"),
    (("quantize", "lenet300", "--keep-8bit", "fc9"), "layer_bits key 'fc9' matches none of the targeted layers"),
    (("prune", "lenet300", "--rounds", "0"), "--rounds"),
])
def test_bad_options_fail_before_any_work(main, args, message):
    code, stdout, stderr = main(*args)
    assert code == 2 and message in stdout + stderr
    assert "epoch" not in stdout + stderr


def test_train_out_folder_fails_before_training(main, tmp_path):
    code, stdout, stderr = main("train", "lenet300", "--epochs", "1", "--out", str(tmp_path))
    assert code == 2 and "is a folder" in stderr and "epoch" not in stdout + stderr


def test_resume_from_a_file_that_is_no_checkpoint_is_a_user_error(main, tmp_path):
    fake = tmp_path / "x.png"
    fake.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    code, stdout, stderr = main("train", "lenet300", "--epochs", "1", "--checkpoint", str(fake), "--resume")
    assert code == 2 and "is not a training checkpoint" in stderr and "Traceback" not in stdout + stderr


def write_labels(path, values: np.ndarray, type_code: int) -> None:
    big = values.astype(values.dtype.newbyteorder(">"))
    path.write_bytes(gzip.compress(struct.pack(">HBBI", 0, type_code, 1, len(values)) + big.tobytes()))


@pytest.mark.parametrize("labels, type_code, message", [
    (np.array([0, 1, 10, 3], np.uint8), 0x08, r"label 10 is outside \[0, 9\]"),
    (np.array([0, 1, -1, 3], np.int8), 0x09, r"label -1 is outside \[0, 9\]"),
    (np.array([0.5, 1, 2, 3], np.float32), 0x0D, "labels of type float32, expected an integer"),
])
def test_idx_labels_are_checked(tmp_path, labels, type_code, message):
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", np.zeros((4, 28, 28), np.uint8))
    write_labels(tmp_path / "t10k-labels-idx1-ubyte.gz", labels, type_code)
    with pytest.raises(DataFileError, match=message):
        load_dataset("mnist-10k", tmp_path)


def test_a_killed_writers_stale_temp_file_is_removed(tmp_path):
    stale, fresh, other = tmp_path / ".m.nnc.abc123xy.tmp", tmp_path / ".m.nnc.zzz999qq.tmp", tmp_path / ".x.abc123xy.tmp"
    for path in (stale, fresh, other):
        path.write_text("half")
    old = time.time() - 2 * fileio.STALE_TMP_SECONDS
    os.utime(stale, (old, old))
    os.utime(other, (old, old))
    atomic_write_text(tmp_path / "m.nnc", "whole")
    assert not stale.exists()  # ours, old: a killed write's leftover
    assert fresh.exists()  # may belong to a writer running right now
    assert other.exists()  # another file's


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_written_files_respect_the_umask(tmp_path, umask):
    previous = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "f.txt", "x")
    finally:
        os.umask(previous)
    assert (tmp_path / "f.txt").stat().st_mode & 0o777 == 0o666 & ~umask


def test_the_file_and_its_folder_are_fsynced_before_and_after_the_rename(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: events.append(("fsync", os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))))
                        or real_fsync(fd))
    monkeypatch.setattr(os, "replace", lambda a, b: events.append(("replace",)) or real_replace(a, b))
    atomic_write_text(tmp_path / "f.txt", "x")
    assert [e[0] for e in events] == ["fsync", "replace", "fsync"]
    assert events[0][1].endswith(".tmp") and events[2][1] == tmp_path.name
