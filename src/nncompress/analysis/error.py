"""Quantization error analysis (lecture "Quantization post training": SQNR; accumulated quantization error).

Per layer: the SQNR of the quantized weight against the float weight, and the SQNR and cosine
similarity of the layer's output in the quantized model against the float model on the same
input, which shows how the error accumulates from the input to the logits.
"""
from __future__ import annotations

import torch
from torch import nn

from ..parametrize import original, transforms
from .calibrate import capture_outputs
from .metrics import cosine_similarity, sqnr_db, weight_layers


def weight_sqnr(model: nn.Module) -> dict[str, float]:
    """SQNR (dB) of each transformed weight (what the model computes with) against its original."""
    return {name: sqnr_db(original(layer), layer.weight)
            for name, layer in weight_layers(model).items() if transforms(layer)}


def output_error(float_model: nn.Module, quant_model: nn.Module, batch: object) -> dict[str, dict[str, float]]:
    """Per weight layer (by name in `float_model`): output SQNR (dB) and cosine, quantized vs float,
    on one batch of any shape `batches.py` accepts (a tensor, an (x, y) pair, a dict...)."""
    names = [n for n in weight_layers(float_model)]
    quant_names = dict(quant_model.named_modules())
    names = [n for n in names if n in quant_names]
    ref = capture_outputs(float_model, names, batch)
    got = capture_outputs(quant_model, names, batch)
    return {n: {"sqnr_db": sqnr_db(ref[n], got[n]), "cosine": cosine_similarity(ref[n], got[n])} for n in names}
