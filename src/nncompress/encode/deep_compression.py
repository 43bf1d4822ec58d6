"""Deep Compression (Han et al., ICLR 2016) on the way to the `.nnc` container: pruning masks and
k-means codebooks are ordinary transforms, so `model.encode_model` stores a pruned, weight-shared
layer as the chain [mask, kmeans]; the container then codes the keep mask as Huffman-coded
relative indices, the cluster indices at the kept positions as a Huffman stream, and the codebook
raw (float16 when lossless). This module holds what the Deep Compression flow adds: rounding the
values that would otherwise be stored in float32 to float16, losslessly for the decoded model, and
(`bias_bits`) biases as integer codes: at 100x+ float16 biases are a tenth of LeNet-5's file
(issue 16), and symmetric per-tensor linear quantization (lecture 005: b ~ S q, S = max|b| /
(2^(bits-1) - 1)) stores them in `bits` bits each, Huffman-coded, plus one float32 scale (and an
int32 zero point, 0) per layer.
"""
from __future__ import annotations

import torch
from torch import nn

from ..analysis.metrics import weight_layers
from ..parametrize import Encoded, attach, find_transform, transforms
from ..quant.fake import FakeQuant
from ..quant.granularity import PerTensor
from ..quant.kmeans import SharedWeights
from ..quant.primitives import IntSpec
from ..validate import UserError
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


def bias_quantizer(bias: torch.Tensor, bits: int) -> FakeQuant:
    """Symmetric per-tensor `bits`-bit linear quantization fitted to `bias` (min-max range)."""
    return FakeQuant.fit(bias.detach().float(), IntSpec(bits=bits, signed=True, symmetric=True), PerTensor())


def bias_chains(model: nn.Module, bits: int) -> dict[str, list[Encoded]]:
    """The stored chain of every Conv / Linear bias quantized to `bits` bits (for byte costs)."""
    return {f"{name}.bias": [bias_quantizer(layer.bias, bits).encode(layer.bias.detach().float())]
            for name, layer in weight_layers(model).items() if layer.bias is not None}


def quantize_biases_(model: nn.Module, bits: int) -> None:
    """Put every Conv / Linear bias on a symmetric per-tensor `bits`-bit grid (a FakeQuant transform:
    the model computes with the quantized bias, the file stores codes and the scale). A bias already
    on a `bits`-bit grid is left as it is; one already transformed otherwise is a UserError."""
    for name, layer in weight_layers(model).items():
        if layer.bias is None:
            continue
        existing = transforms(layer, "bias")
        if not existing:
            attach(layer, bias_quantizer(layer.bias, bits), "bias", layer_name=name)
        elif not (len(existing) == 1 and isinstance(existing[0], FakeQuant) and existing[0].spec.bits == bits):
            raise UserError(f"layer {name!r}: its bias is already transformed ({type(existing[0]).__name__}); "
                            f"bias_bits={bits} needs a float bias")
