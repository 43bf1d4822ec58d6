"""Unfused attention, so that every projection of a transformer is a quantizable `nn.Linear`.

torch's `nn.MultiheadAttention` keeps Q, K and V in one raw parameter (`in_proj_weight`) and reads
`out_proj.weight` directly, and `nn.TransformerEncoderLayer` has an inference fast path that reads
`linear1.weight` / `linear2.weight` itself; so a layer whose input is fake-quantized (a wrapped
Linear) would be bypassed or break there. `unfuse_attention_` swaps every `nn.MultiheadAttention`
for `SplitAttention`: the same function (softmax(Q K^T / sqrt(d)) V per head, Vaswani et al. 2017)
with separate `q_proj`, `k_proj`, `v_proj` and `out_proj` Linears, the same call signature and
outputs, and no fast path. torch.ao's quantizable MultiheadAttention splits Q/K/V the same way.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..validate import UserError

OptionalMask = torch.Tensor | None


class SplitAttention(nn.Module):
    """Multi-head attention with one `nn.Linear` per projection; a drop-in for nn.MultiheadAttention."""

    in_proj_bias = None  # read by nn.TransformerEncoderLayer: None turns its fused fast path off
    _qkv_same_embed_dim = False

    def __init__(self, embed_dim: int, num_heads: int, *, dropout: float = 0.0, bias: bool = True,
                 kdim: int | None = None, vdim: int | None = None, batch_first: bool = False):
        super().__init__()
        if embed_dim % num_heads:
            raise UserError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.embed_dim, self.num_heads, self.dropout, self.batch_first = embed_dim, num_heads, dropout, batch_first
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.k_proj = nn.Linear(kdim or embed_dim, embed_dim, bias=bias)
        self.v_proj = nn.Linear(vdim or embed_dim, embed_dim, bias=bias)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)

    @classmethod
    @torch.no_grad()
    def from_fused(cls, mha: nn.MultiheadAttention) -> SplitAttention:
        """The same attention with the fused weights copied into four Linears."""
        if mha.bias_k is not None or mha.add_zero_attn:
            raise UserError("SplitAttention: add_bias_kv / add_zero_attn are not supported; "
                             "build the attention from nn.Linear layers instead")
        split = cls(mha.embed_dim, mha.num_heads, dropout=mha.dropout, bias=mha.in_proj_bias is not None,
                    kdim=mha.kdim, vdim=mha.vdim, batch_first=mha.batch_first)
        weights = (mha.in_proj_weight.chunk(3) if mha._qkv_same_embed_dim
                   else (mha.q_proj_weight, mha.k_proj_weight, mha.v_proj_weight))
        biases = mha.in_proj_bias.chunk(3) if mha.in_proj_bias is not None else (None, None, None)
        for proj, w, b in zip((split.q_proj, split.k_proj, split.v_proj), weights, biases, strict=True):
            _copy_linear(proj, w, b)
        _copy_linear(split.out_proj, mha.out_proj.weight, mha.out_proj.bias)
        return split.train(mha.training)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = True,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            key_padding_mask = None if key_padding_mask is None else key_padding_mask.unsqueeze(0)
        elif self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        out, weights = self._attend(query, key, value, key_padding_mask, attn_mask, is_causal)  # (L, N, E)
        out = out.squeeze(1) if unbatched else (out.transpose(0, 1) if self.batch_first else out)
        if not need_weights:
            return out, None
        weights = weights.mean(1) if average_attn_weights else weights
        return out, weights.squeeze(0) if unbatched else weights

    def _attend(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, key_padding_mask: OptionalMask,
                attn_mask: OptionalMask, is_causal: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Sequence-first (L, N, E) attention; returns the output and the (N, H, L, S) weights."""
        length, batch, source = query.shape[0], query.shape[1], key.shape[0]
        q, k, v = (self._heads(p(t)) for p, t in ((self.q_proj, query), (self.k_proj, key), (self.v_proj, value)))
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (N, H, L, S)
        scores = scores + self._bias(attn_mask, key_padding_mask, is_causal, (batch, length, source), scores)
        weights = F.softmax(scores, dim=-1)
        attended = F.dropout(weights, self.dropout, self.training) @ v  # (N, H, L, D)
        out = attended.permute(2, 0, 1, 3).reshape(length, batch, self.embed_dim)
        return self.out_proj(out), weights

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """(T, N, E) -> (N, H, T, E / H)."""
        return x.reshape(x.shape[0], x.shape[1], self.num_heads, -1).permute(1, 2, 0, 3)

    def _bias(self, attn_mask: OptionalMask, key_padding_mask: OptionalMask, is_causal: bool, sizes: tuple[int, int, int],
              like: torch.Tensor) -> torch.Tensor:
        """Additive mask of shape broadcastable to (N, H, L, S): bool True / -inf means 'do not attend'."""
        batch, length, source = sizes
        bias = like.new_zeros(())
        if attn_mask is None and is_causal:
            attn_mask = torch.ones(length, source, dtype=torch.bool, device=like.device).triu(1)
        if attn_mask is not None:
            mask = _additive(attn_mask, like)
            bias = bias + (mask.view(batch, self.num_heads, length, source) if mask.dim() == 3 else mask)
        if key_padding_mask is not None:
            bias = bias + _additive(key_padding_mask, like).view(batch, 1, 1, source)
        return bias

    def extra_repr(self) -> str:
        return f"embed_dim={self.embed_dim}, num_heads={self.num_heads}, batch_first={self.batch_first}"


def _additive(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    if mask.dtype == torch.bool:
        return torch.zeros_like(mask, dtype=like.dtype).masked_fill(mask, float("-inf"))
    return mask.to(like.dtype)


def _copy_linear(linear: nn.Linear, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    linear.weight.copy_(weight)
    if bias is not None:
        linear.bias.copy_(bias)


def unfuse_attention_(model: nn.Module) -> list[str]:
    """Replace every nn.MultiheadAttention in `model` by an equal SplitAttention; returns their names.

    nn.TransformerEncoder's nested-tensor fast path is switched off too (it reads fused weights).
    """
    names = [name for name, m in model.named_modules() if name and isinstance(m, nn.MultiheadAttention)]
    for name in names:
        model.set_submodule(name, SplitAttention.from_fused(model.get_submodule(name)))
    for module in model.modules():
        if isinstance(module, nn.TransformerEncoder) and names:
            module.use_nested_tensor = False
    return names
