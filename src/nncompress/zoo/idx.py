"""Parser for the IDX format of MNIST / Fashion-MNIST (LeCun et al., http://yann.lecun.com/exdb/mnist/).

An IDX file is: two zero bytes, a type code (0x08 = unsigned byte), the number of dimensions, then
one big-endian uint32 per dimension and the data in C order. Files may be gzip-compressed.
"""
from __future__ import annotations

import gzip
import math
import os
import struct
from pathlib import Path

import numpy as np

from ..validate import UserError

_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
           0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


class DataFileError(UserError):
    """A dataset file is missing, truncated or not in the expected format (a user error: the CLI
    prints it and exits 2)."""


def _read_bytes(path: Path) -> bytes:
    if not path.is_file():
        raise DataFileError(f"data file {str(path)!r} does not exist")
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, EOFError) as err:  # gzip raises these on a truncated or corrupt stream
        raise DataFileError(f"data file {str(path)!r} is corrupt or truncated: {err}") from err


def parse_idx(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Parse IDX bytes into a numpy array, checking the magic number and the exact length."""
    if len(data) < 4:
        raise DataFileError(f"{name}: {len(data)} bytes is too short for an IDX header (need >= 4)")
    zero, type_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or type_code not in _DTYPES or not 1 <= ndim <= 4:
        raise DataFileError(f"{name}: wrong magic number 0x{int.from_bytes(data[:4], 'big'):08x}; "
                            "expected 0x0000TTDD (TT = type 0x08..0x0E, DD = 1..4 dimensions)")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataFileError(f"{name}: truncated header ({len(data)} bytes, need {header})")
    shape = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(_DTYPES[type_code])
    expected = header + math.prod(shape) * dtype.itemsize  # Python ints: no int64 wrap-around
    if len(data) != expected:
        raise DataFileError(f"{name}: {len(data)} bytes but shape {shape} needs {expected}: "
                            "the file is truncated or has trailing data")
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def read_idx(path: str | os.PathLike, expect_ndim: int | None = None) -> np.ndarray:
    """Read an IDX file (optionally .gz) and check its number of dimensions."""
    path = Path(path)
    array = parse_idx(_read_bytes(path), str(path))
    if expect_ndim is not None and array.ndim != expect_ndim:
        raise DataFileError(f"{str(path)!r}: expected {expect_ndim} dimensions, found shape {array.shape}")
    return array


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write a uint8 array as an IDX file (gzip when the name ends in .gz); used by tests and tools."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    data = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data += array.tobytes()
    path = Path(path)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
