"""Run pruned Linear layers with torch's sparse CSR kernels when that is faster.

Measured on this machine class (benchmarks/results/pruning.md): torch CSR matmul beats dense only
above about 90% sparsity, so `sparsify_linear_` converts a layer only at or above `min_sparsity`.
"""
from __future__ import annotations

import warnings

import torch
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


@torch.no_grad()
def sparsify_linear_(model: nn.Module, min_sparsity: float = 0.9) -> list[str]:
    """Replace every Linear whose weight is at least `min_sparsity` zeros by a SparseLinear.

    Parametrized layers contribute the weight they compute with. Returns the converted names.
    """
    converted = []
    for name, module in list(model.named_modules()):
        if type_before_parametrizations(module) is not nn.Linear:
            continue
        weight = module.weight.detach()
        if 1 - torch.count_nonzero(weight).item() / weight.numel() < min_sparsity:
            continue
        model.set_submodule(name, SparseLinear(weight, module.bias))
        converted.append(name)
    return converted
