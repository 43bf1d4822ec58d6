"""BatchNorm folded *after* quantization-aware training, into the learned per-channel grids.

LSQ (Esser et al. 2020) and PACT train their low-bit networks with BatchNorm live: batch statistics
in the forward pass, running statistics updated. Krishnamoorthi (2018, sec. 3.2) lists this beside
folding first; at 2 bits it matters (measured on ResNet-20 in benchmarks/results/qat_resnet20.md:
folded first, the network trains without normalisation and collapses). Afterwards the eval-mode
BatchNorm y = (x - mu) f + beta, f = g / sqrt(v + eps), folds into the layer before it exactly on the
grid when the weight has one step per output channel:

    W'_c = W_c f_c  with codes unchanged and s'_c = s_c |f_c|    (negated codes where f_c < 0)
    b'   = (b - mu) f + beta, then on the int32 grid S_W' S_X (TiedBiasQuant)

so the folded model is the trained model up to the bias rounding, and `convert_`, the integer
engine and ONNX export read it as any folded QAT model.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..parametrize import attach, transforms
from ..validate import UserError
from .activation import input_quantizer
from .fold import batchnorm_affine
from .granularity import PerChannel
from .qat import TiedBiasQuant


@torch.no_grad()
def fold_trained_batchnorm_(model: nn.Module, pairs: list[tuple[str, str]]) -> dict:
    """Fold each (layer, BatchNorm) of `pairs` (names from `fold.batchnorm_pairs`, taken before the
    quantizers were attached) into the layer's learned weight grid; the BatchNorms become Identity.
    Returns {"layers": folded layer names, "clamped_codes": codes -Q_N that a negative f pushed out
    of range (clamped to Q_P; 0 unless some gamma < 0)}."""
    check_foldable(model, pairs)
    modules = dict(model.named_modules())
    clamped = 0
    for layer_name, bn_name in pairs:
        layer, bn = modules[layer_name], modules[bn_name]
        factor, shift = batchnorm_affine(bn)
        bias = layer.bias.detach().clone() if layer.bias is not None else torch.zeros_like(bn.running_mean)  # as trained (rounded)
        clamped += _grid_of(layer, layer_name).fold_channel_scale_(layer.parametrizations.weight.original, factor)
        _fold_bias_(layer, layer_name, (bias - bn.running_mean) * factor + shift)
        model.set_submodule(bn_name, nn.Identity())
    return {"layers": [layer for layer, _ in pairs], "clamped_codes": clamped}


def check_foldable(model: nn.Module, pairs: list[tuple[str, str]]) -> None:
    """Raise a UserError naming the layer unless every layer of `pairs` has one learned weight grid
    with a step per output channel (check it before QAT trains, not after)."""
    modules = dict(model.named_modules())
    for layer_name, _ in pairs:
        grid = _grid_of(modules[layer_name], layer_name)
        granularity = getattr(grid, "granularity", None)
        if not isinstance(granularity, PerChannel) or granularity.axis % modules[layer_name].weight.dim() != 0:
            raise UserError(f"layer {layer_name!r}: folding a trained BatchNorm into a learned grid needs one step "
                            f"per output channel, not {granularity}: quantize with granularity='channel'")


def _grid_of(layer: nn.Module, layer_name: str):
    chain = transforms(layer)
    if len(chain) != 1 or not hasattr(chain[0], "fold_channel_scale_"):
        names = [type(t).__name__ for t in chain] or ["no transform"]
        raise UserError(f"layer {layer_name!r}: a trained BatchNorm folds only into one learned per-channel weight "
                        f"grid (LSQ), not into {', '.join(names)}; use batchnorm='fold' (fold before QAT)")
    return chain[0]


def _fold_bias_(layer: nn.Module, layer_name: str, value: torch.Tensor) -> None:
    if parametrize.is_parametrized(layer, "bias"):
        layer.parametrizations.bias.original.copy_(value)
        return
    layer.bias = nn.Parameter(value.detach().clone())
    if input_quantizer(layer) is not None:
        attach(layer, TiedBiasQuant(layer), "bias", layer_name=layer_name)
