"""Deep Compression (Han et al., ICLR 2016) on the way to the `.nnc` container: pruning masks and
k-means codebooks are ordinary transforms, so `model.encode_model` stores a pruned, weight-shared
layer as the chain [mask, kmeans]; the container then codes the keep mask as Huffman-coded
relative indices, the cluster indices at the kept positions as a Huffman stream, and the codebook
raw (float16 when lossless). This module holds what the Deep Compression flow adds: rounding the
values that would otherwise be stored in float32 to float16, losslessly for the decoded model.
"""
from __future__ import annotations

import torch
from torch import nn

from ..analysis.metrics import weight_layers
from ..parametrize import find_transform
from ..quant.kmeans import SharedWeights
from .model import decode_model, encode_model  # noqa: F401  (the CLI imports decode_model from here)


@torch.no_grad()
def round_biases_fp16_(model: nn.Module) -> None:
    """Round Conv / Linear biases to float16 values, so the .nnc file stores them in 2 bytes each."""
    for layer in weight_layers(model).values():
        if layer.bias is not None:
            layer.bias.copy_(layer.bias.half().float())


@torch.no_grad()
def round_codebooks_fp16_(model: nn.Module) -> None:
    """Round shared-weight codebooks to float16 values, so the .nnc file stores them in 2 bytes each."""
    for layer in weight_layers(model).values():
        shared = find_transform(layer, SharedWeights)
        if shared is not None:
            shared.codebook.copy_(shared.codebook.half().float())
