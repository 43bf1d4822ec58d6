"""Per-token int8 quantization and the int32 -> float32 epilogue in one C call each (`_int8_rows.c`),
around torch's int8 GEMM: the hot path of `Int8DynamicLinear` (lecture 005, r = S (q - Z), one (S, Z)
per token).

`quantize_rows` finds each row's range (or the tensor's) and reproduces the simulation's float32
operations exactly (qparams_of_finite_range, then clamp(round(x / S) + Z)); `dequantize_rows` /
`rescale_rows` compute y = (acc S_W) S_i + (S_i (c - Z_i) S_W colsum + b). The row loops run on
torch's OpenMP threads. Replacing ~15 torch ops per Linear with two calls took per-token int8 on a
BERT-style encoder from 1.4-1.6x to 2.2-2.4x float32 PyTorch, level with torch's per-tensor
quantize_dynamic at batch 8 (benchmarks/results/runtime.md). Without a C compiler `available()` is False and the layer keeps its
pure-torch path (the same function, within float32 rounding). Every tensor handed to C is a
contiguous CPU tensor of the dtype the C code reads (the caller checks the inputs, these functions
allocate the outputs).
"""
from __future__ import annotations

import ctypes

import torch

from . import native

NAME = "_int8_rows"


def _declare(library: ctypes.CDLL) -> None:
    p, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    library.nnc_quantize_rows.argtypes = [p, i64, i64, i32, i32, i32, i32, p, p, p]
    library.nnc_quantize_rows.restype = i64
    library.nnc_dequantize_rows.argtypes = [p, i64, i64, p, p, p, p, p, p]
    library.nnc_dequantize_rows.restype = None
    library.nnc_rescale_rows.argtypes = [p, i64, i64, p, p, p, p, p]
    library.nnc_rescale_rows.restype = None


def available() -> bool:
    """Whether the kernel loaded (else `native.status("_int8_rows")["reason"]` says why)."""
    return native.load(NAME, _declare) is not None


def quantize_rows(rows: torch.Tensor, per_row: bool, q_range: tuple[int, int], shift: int,
                  code_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | int:
    """Codes q - shift (`code_dtype`: int8 or uint8), each row's S and S (shift - Z), for contiguous
    float32 `rows` (n x k), with each row's own range (`per_row`: per token) or the whole tensor's,
    found in the same call. Returns the index of the first row whose range is not finite instead
    (per tensor: the first row holding a NaN or an infinity), for the caller's error message."""
    n, k = rows.shape
    codes = torch.empty((n, k), dtype=code_dtype)
    row_scale, row_term = torch.empty(n, dtype=torch.float32), torch.empty(n, dtype=torch.float32)
    bad = native.load(NAME, _declare).nnc_quantize_rows(rows.data_ptr(), n, k, int(per_row), q_range[0], q_range[1],
                                                        shift, codes.data_ptr(), row_scale.data_ptr(),
                                                        row_term.data_ptr())
    return bad - 1 if bad else (codes, row_scale, row_term)


def dequantize_rows(acc: torch.Tensor, row_scale: torch.Tensor, row_term: torch.Tensor, col_scale: torch.Tensor,
                    col_sum: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """y = (acc S_W) S_i + (term_i colsum + b) for an int32 accumulator (n x m, contiguous)."""
    out = torch.empty(acc.shape, dtype=torch.float32)
    native.load(NAME, _declare).nnc_dequantize_rows(
        acc.data_ptr(), acc.shape[0], acc.shape[1], row_scale.data_ptr(), row_term.data_ptr(), col_scale.data_ptr(),
        col_sum.data_ptr(), bias.data_ptr(), out.data_ptr())
    return out


def rescale_rows_(scaled: torch.Tensor, row_scale: torch.Tensor, row_term: torch.Tensor, col_sum: torch.Tensor,
                  bias: torch.Tensor) -> torch.Tensor:
    """In place on a float32 GEMM output that already holds acc S_W: y = scaled S_i + (term_i colsum + b)."""
    native.load(NAME, _declare).nnc_rescale_rows(
        scaled.data_ptr(), scaled.shape[0], scaled.shape[1], row_scale.data_ptr(), row_term.data_ptr(),
        col_sum.data_ptr(), bias.data_ptr(), scaled.data_ptr())
    return scaled

