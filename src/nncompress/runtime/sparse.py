"""Run pruned Linear and Conv2d layers with torch's sparse CSR kernels when that is faster.

Measured on this machine class (benchmarks/results/sparse_latency_2t.md): torch CSR matmul beats dense
only above about 90% sparsity, so `sparsify_linear_` converts a layer only at or above `min_sparsity`;
`runtime/kernel_select.py: use_sparse_kernels_` decides per layer by measuring instead.
A convolution runs as im2col (`F.unfold`) followed by one CSR x dense product:
out[b, k, p] = sum_j W_csr[k, j] cols[b, j, p], with j over (c, kh, kw) in PyTorch's weight order.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrize import type_before_parametrizations


class SparseLinear(nn.Module):
    """y = x W^T + b with W stored as a torch sparse CSR tensor (inference only)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]
        with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta state"
            warnings.simplefilter("ignore", UserWarning)
            self.register_buffer("weight", weight.detach().to_sparse_csr())
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    @classmethod
    def from_dense(cls, layer: nn.Linear) -> SparseLinear:
        return cls(layer.weight, layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, self.in_features)
        out = torch.sparse.mm(self.weight, flat.t()).t()
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        nnz = self.weight.values().numel()
        return f"in_features={self.in_features}, out_features={self.out_features}, density={nnz / (self.in_features * self.out_features):.3f}"


def _csr(weight: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta state"
        warnings.simplefilter("ignore", UserWarning)
        return weight.detach().to_sparse_csr()


class SparseConv2d(nn.Module):
    """A Conv2d (groups = 1, zero padding) with its lowered weight [K, C kh kw] in CSR form, run as
    im2col + sparse x dense matrix product (inference only)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, stride, padding, dilation):
        super().__init__()
        self.out_channels, self.in_channels = weight.shape[0], weight.shape[1]
        self.kernel_size = tuple(weight.shape[2:])
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self.register_buffer("weight", _csr(weight.reshape(weight.shape[0], -1)))
        self.register_buffer("bias", None if bias is None else bias.detach().clone())

    @classmethod
    def from_dense(cls, layer: nn.Conv2d) -> SparseConv2d:
        if layer.groups != 1 or layer.padding_mode != "zeros" or isinstance(layer.padding, str):
            raise ValueError(f"SparseConv2d runs groups=1 convolutions with numeric zero padding, got groups={layer.groups}, "
                             f"padding={layer.padding!r}, padding_mode={layer.padding_mode!r}")
        return cls(layer.weight, layer.bias, layer.stride, layer.padding, layer.dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = x.shape
        cols = F.unfold(x, self.kernel_size, self.dilation, self.padding, self.stride)  # [B, C kh kw, L]
        positions = cols.shape[-1]
        out = torch.sparse.mm(self.weight, cols.transpose(0, 1).reshape(cols.shape[1], -1))  # [K, B L]
        out = out.reshape(self.out_channels, batch, positions).transpose(0, 1)
        if self.bias is not None:
            out = out + self.bias[:, None]
        h_out = (height + 2 * self.padding[0] - self.dilation[0] * (self.kernel_size[0] - 1) - 1) // self.stride[0] + 1
        return out.reshape(batch, self.out_channels, h_out, positions // h_out)

    def extra_repr(self) -> str:
        nnz = self.weight.values().numel()
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, density={nnz / (self.weight.shape[0] * self.weight.shape[1]):.3f}")


@torch.no_grad()
def sparsify_linear_(model: nn.Module, min_sparsity: float = 0.9) -> list[str]:
    """Replace every Linear whose weight is at least `min_sparsity` zeros by a SparseLinear.

    Parametrized layers contribute the weight they compute with; layers with an activation quantizer
    stay (a SparseLinear has none). Returns the converted names.
    """
    converted = []
    for name, module in list(model.named_modules()):
        if type_before_parametrizations(module) is not nn.Linear or getattr(module, "input_quantizer", None) is not None:
            continue
        weight = module.weight.detach()
        if 1 - torch.count_nonzero(weight).item() / weight.numel() < min_sparsity:
            continue
        model.set_submodule(name, SparseLinear(weight, module.bias))
        converted.append(name)
    return converted
