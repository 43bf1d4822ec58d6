"""A small Vision-Transformer encoder (Dosovitskiy et al. 2021) with plain `nn.Linear` projections, so
every attention and MLP matrix is a quantizable Linear layer (torch's fused MultiheadAttention keeps
Q/K/V in one raw parameter). Images are cut into a 4 x 4 grid of patches (16 tokens).
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..validate import UserError


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.proj = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        split = lambda y: y.view(b, t, self.heads, d // self.heads).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(d // self.heads), dim=-1)
        return self.proj((weights @ v).transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, dim: int, heads: int, hidden: int):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, heads)
        self.norm2, self.fc1, self.act, self.fc2 = nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(self.act(self.fc1(self.norm2(x))))


class TinyViT(nn.Module):
    def __init__(self, in_shape: tuple[int, ...] = (1, 28, 28), num_classes: int = 10, dim: int = 64,
                 depth: int = 2, heads: int = 4, hidden: int = 128, grid: int = 4):
        super().__init__()
        c, h, w = in_shape
        if h % grid or w % grid:
            raise UserError(f"image size {h}x{w} must be divisible by the {grid}x{grid} patch grid")
        self.patch = (h // grid, w // grid)
        self.embed = nn.Linear(c * self.patch[0] * self.patch[1], dim)
        self.pos = nn.Parameter(torch.randn(1, grid * grid, dim) * 0.02)
        self.blocks = nn.Sequential(*(Block(dim, heads, hidden) for _ in range(depth)))
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, num_classes)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        ph, pw = self.patch
        patches = x.unfold(2, ph, ph).unfold(3, pw, pw)  # b, c, gh, gw, ph, pw
        return patches.permute(0, 2, 3, 1, 4, 5).flatten(3).flatten(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.blocks(self.embed(self.tokens(x)) + self.pos)
        return self.head(self.norm(h).mean(1))


def tiny_vit(in_shape: tuple[int, ...] = (1, 28, 28), num_classes: int = 10) -> nn.Module:
    return TinyViT(in_shape, num_classes)
