"""Binary GEMM and convolution on a real XNOR + popcount kernel (Rastegari et al., ECCV 2016; lecture
003 "XNOR-Net": X^T W ~ beta alpha (sign(X) xnor sign(W)), binary dot = n - 2 popcount(a xor b)).

The kernel (`_xnor.c`, plain C loaded with ctypes by `runtime.native`) is built at install time by
setup.py, or compiled once on first use. `kernel_status()` says which library runs and why
not when none does. Packing: 64 values {-1, +1} per 64-bit word, bit 1 = +1 (x >= 0), bit j of
word w = element 64 w + j, the last word's tail zero (so it never differs).

`to_xnor_kernel_(model)` swaps each layer that XNOR-Net / BNN binarized (binary weights *and*
binary inputs, `quant.binary`) for an `XnorLinear` / `XnorConv2d` that runs the kernel:
BN -> sign -> pack -> popcount GEMM (int32) -> x beta_n alpha_o (+ bias). Convolutions go through
im2col; zero padding is exact (a padded tap is packed as +1 and its contribution removed with a
precomputed per-position correction).
"""
from __future__ import annotations

import ctypes

import torch
import torch.nn.functional as F
from torch import nn

from ..parametrize import original, transforms
from ..quant.binary import BinaryActivation, BinaryWeight, sign_pm1
from ..quant.convert import Stored
from ..validate import UserError
from . import native

ISA_NAMES = {0: "scalar", 1: "avx2", 2: "avx512-vpopcntdq"}


def load_kernel() -> ctypes.CDLL | None:
    """The XNOR kernel library, or None (the reason is in `kernel_status()["reason"]`)."""
    return native.load("_xnor", _declare)


def _declare(library: ctypes.CDLL) -> None:
    p, i64 = ctypes.c_void_p, ctypes.c_int64
    library.xnor_gemm.argtypes = [p, p, i64, i64, i64, i64, p, ctypes.c_int]
    library.xnor_gemm.restype = ctypes.c_int
    library.xnor_pack_f32.argtypes = [p, i64, i64, p]
    library.xnor_pack_f32.restype = ctypes.c_int
    library.xnor_isa.restype = library.xnor_best_isa.restype = ctypes.c_int


def kernel_status() -> dict[str, str]:
    """{"library", "isa" (the kernel that runs), "best_isa" (what the CPU has)} or {"reason"}."""
    library = load_kernel()
    found = native.status("_xnor")
    if library is not None:
        found.update(isa=ISA_NAMES.get(library.xnor_isa(), "?"), best_isa=ISA_NAMES.get(library.xnor_best_isa(), "?"))
    return found


def _require() -> ctypes.CDLL:
    library = load_kernel()
    if library is None:
        raise UserError(f"the XNOR kernel is not available: {native.status('_xnor').get('reason')}; install a C compiler "
                        "(e.g. apt-get install gcc) and reinstall, or run the simulated model instead")
    return library


def words_for(k: int) -> int:
    """64-bit words that hold k packed values."""
    return (k + 63) // 64


def pack_reference(x: torch.Tensor) -> torch.Tensor:
    """Pure-torch packing of a (rows, k) tensor (bit = x >= 0) into (rows, words) int64, the
    kernel's layout; the oracle the C packing is tested against."""
    rows, k = x.shape
    bits = torch.zeros(rows, words_for(k) * 64, dtype=torch.int64)
    bits[:, :k] = (x >= 0).to(torch.int64)
    weights = torch.ones(64, dtype=torch.int64) << torch.arange(64, dtype=torch.int64)  # bit 63 wraps to int64 min
    return (bits.view(rows, -1, 64) * weights).sum(-1)


def pack(x: torch.Tensor) -> torch.Tensor:
    """Pack a (rows, k) float tensor with the kernel: (rows, words) int64 (bit = x >= 0)."""
    library = _require()
    if x.dim() != 2:
        raise UserError(f"pack expects a (rows, k) matrix, got shape {tuple(x.shape)}")
    x = x.detach().contiguous().float()
    out = torch.empty(x.shape[0], words_for(x.shape[1]), dtype=torch.int64)
    library.xnor_pack_f32(x.data_ptr(), x.shape[0], x.shape[1], out.data_ptr())
    return out


def xnor_gemm(a: torch.Tensor, b: torch.Tensor, k: int, threads: int | None = None) -> torch.Tensor:
    """out[i, j] = sum_t A[i, t] B[j, t] over k values in {-1, +1}, from packed A (m, words) and
    B (n, words): k - 2 popcount(A_i xor B_j), int32 (m, n). `threads`: default torch's count."""
    library = _require()
    if a.dtype != torch.int64 or b.dtype != torch.int64 or a.dim() != 2 or b.dim() != 2:
        raise UserError("xnor_gemm expects packed int64 matrices from pack()")
    if a.shape[1] != b.shape[1] or a.shape[1] != words_for(k):
        raise UserError(f"xnor_gemm: packed widths {a.shape[1]} and {b.shape[1]} words do not hold k={k} values "
                        f"({words_for(k)} words)")
    a, b = a.contiguous(), b.contiguous()
    out = torch.empty(a.shape[0], b.shape[0], dtype=torch.int32)
    library.xnor_gemm(a.data_ptr(), b.data_ptr(), a.shape[0], b.shape[0], a.shape[1], k, out.data_ptr(),
                      threads or torch.get_num_threads())
    return out


def binary_matmul(a: torch.Tensor, b: torch.Tensor, threads: int | None = None) -> torch.Tensor:
    """sign(a) @ sign(b).T for float (m, k) and (n, k), on the kernel (int32)."""
    return xnor_gemm(pack(a), pack(b), a.shape[1], threads)


class XnorLinear(nn.Module):
    """A binarized Linear on the kernel: y = beta alpha_o (sign(BN(x)) . sign(W_o)) + b_o."""

    def __init__(self, weight_sign: torch.Tensor, alpha: torch.Tensor, bias: torch.Tensor | None,
                 quantizer: BinaryActivation):
        super().__init__()
        self.in_features, self.k = weight_sign.shape[1], weight_sign.shape[1]
        self.register_buffer("packed", pack(weight_sign))
        self.register_buffer("alpha", alpha.detach().reshape(-1).float().clone())
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())
        self.quantizer = quantizer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.quantizer.normalized(x)
        lead = x.shape[:-1]
        rows = x.reshape(-1, self.k)
        dots = xnor_gemm(pack(rows), self.packed, self.k).float()  # (rows, out)
        out = dots * self.alpha
        if self.quantizer.scaled:
            out = out * self.quantizer.beta(rows)
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*lead, -1)


class XnorConv2d(nn.Module):
    """A binarized Conv2d on the kernel through im2col (groups = 1), exact with zero padding."""

    def __init__(self, conv: nn.Conv2d, weight_sign: torch.Tensor, alpha: torch.Tensor,
                 bias: torch.Tensor | None, quantizer: BinaryActivation):
        super().__init__()
        if conv.groups != 1 or conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise UserError(f"XnorConv2d supports groups=1, numeric zero padding; got groups={conv.groups}, "
                            f"padding={conv.padding!r}, padding_mode={conv.padding_mode!r}")
        self.kernel_size, self.stride, self.padding, self.dilation = conv.kernel_size, conv.stride, conv.padding, conv.dilation
        self.out_channels = weight_sign.shape[0]
        flat = weight_sign.reshape(self.out_channels, -1)
        self.k = flat.shape[1]
        self.register_buffer("weight_sign", flat.clone())
        self.register_buffer("packed", pack(flat))
        self.register_buffer("alpha", alpha.detach().reshape(-1).float().clone())
        self.register_buffer("bias", None if bias is None else bias.detach().float().clone())
        self.quantizer = quantizer
        self._corrections: dict[tuple[int, int, int], torch.Tensor] = {}

    def _unfold(self, x: torch.Tensor) -> torch.Tensor:
        return F.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)

    def correction(self, channels: int, height: int, width: int) -> torch.Tensor:
        """(out, L): sum of sign(W) over the taps that fall in the zero padding at each position
        (packed as +1, they added sign(W) where the float conv adds 0)."""
        key = (channels, height, width)
        if key not in self._corrections:
            padded = 1 - self._unfold(torch.ones(1, channels, height, width))[0]  # (k, L), 1 on padding
            self._corrections[key] = self.weight_sign @ padded
        return self._corrections[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.quantizer.normalized(x)
        n, c, h, w = x.shape
        cols = self._unfold(x)  # (n, k, L)
        length = cols.shape[-1]
        rows = cols.transpose(1, 2).reshape(-1, self.k)
        dots = xnor_gemm(self.packed, pack(rows), self.k).float().view(self.out_channels, n, length)
        if any(self.padding):
            dots = dots - self.correction(c, h, w).unsqueeze(1)
        out = dots.permute(1, 0, 2) * self.alpha.view(1, -1, 1)
        if self.quantizer.scaled:
            out = out * self.quantizer.beta(x).view(n, 1, 1)
        if self.bias is not None:
            out = out + self.bias.view(1, -1, 1)
        h_out = (h + 2 * self.padding[0] - self.dilation[0] * (self.kernel_size[0] - 1) - 1) // self.stride[0] + 1
        return out.reshape(n, self.out_channels, h_out, -1)


def _binary_weight(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(sign(W) in {-1, +1}, alpha per output channel) of a binarized layer (simulated or
    converted), or None if its weight is not binary."""
    chain = transforms(layer)
    if not chain:
        return None
    last = chain[-1]
    if isinstance(last, BinaryWeight) and len(chain) == 1:
        encoded = last.encode(original(layer).detach())
    elif isinstance(last, Stored) and last.encoded_kind == "binary":
        encoded = last.encoded(original(layer))
    else:
        return None
    sign = 2 * encoded.tensors["codes"].float() - 1
    alpha = encoded.tensors["scale"].float().reshape(-1)
    return sign, alpha.expand(sign.shape[0]).clone() if alpha.numel() == 1 else alpha


@torch.no_grad()
def to_xnor_kernel_(model: nn.Module) -> list[str]:
    """Replace every layer with binary weights and a binary input quantizer (XNOR-Net, BNN) by its
    kernel twin (eval mode: the BatchNorm uses running statistics); returns the replaced names."""
    if _require() is None:  # pragma: no cover - _require raises
        return []
    replaced = []
    for name, layer in list(model.named_modules()):
        quantizer = getattr(layer, "input_quantizer", None)
        found = _binary_weight(layer) if isinstance(quantizer, BinaryActivation) else None
        if found is None:
            continue
        sign, alpha = found
        bias = layer.bias.detach() if getattr(layer, "bias", None) is not None else None
        quantizer.eval()
        if isinstance(layer, nn.Linear):
            twin: nn.Module = XnorLinear(sign, alpha, bias, quantizer)
        elif isinstance(layer, nn.Conv2d):
            twin = XnorConv2d(layer, sign, alpha, bias, quantizer)
        else:
            continue
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, twin)
        replaced.append(name)
    return replaced


__all__ = ["XnorConv2d", "XnorLinear", "binary_matmul", "kernel_status", "load_kernel", "pack", "pack_reference",
           "sign_pm1", "to_xnor_kernel_", "words_for", "xnor_gemm"]
