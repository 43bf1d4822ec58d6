"""Model metrics: parameters, non-zeros, size in bits, MACs / FLOPs, bit-operations, SQNR, cosine.

MACs are counted per layer with forward hooks on one example input (batch 1):
- Conv: output elements x (C_in / groups) x kH x kW (depthwise: groups = C_in);
- Linear: output elements x in_features.
BOPs (bit-operations, as in DiffQ / NIPQ and Baskin et al.) = MACs x weight bits x activation bits.
SQNR ("Quantizing neural networks", Efficient Deep Learning session 2):
SQNR = sum |W|^2 / sum |W - W_hat|^2, in dB: 10 log10(SQNR).
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..parametrize import weight_bits
from .hooks import eval_with_hooks

WEIGHT_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


@dataclass
class LayerStats:
    """One weight layer's figures (weights only; biases are counted in `params`)."""

    name: str
    kind: str
    shape: tuple[int, ...]
    params: int
    weights: int
    nonzero: int
    macs: int
    bits: int = 32

    @property
    def density(self) -> float:
        return self.nonzero / self.weights if self.weights else 0.0

    def as_dict(self) -> dict:
        return {**asdict(self), "shape": list(self.shape), "density": self.density}


def weight_layers(model: nn.Module) -> dict[str, nn.Module]:
    """The Conv / Linear layers of `model` by qualified name (parametrized layers included)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, WEIGHT_LAYERS)}


def count_params(model: nn.Module) -> int:
    """Number of parameters (parametrized weights count once, at their original size)."""
    return sum(p.numel() for p in _plain_params(model))


def _plain_params(model: nn.Module):
    """Every trainable tensor once: plain parameters and the `original` behind each parametrization
    (parametrization-owned tensors such as shared-weight codebooks are counted too)."""
    seen: set[int] = set()
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            yield p


def count_nonzero(model: nn.Module) -> int:
    """Non-zero entries of the weights the model computes with (after masks) plus all other parameters."""
    total = 0
    for layer in weight_layers(model).values():
        total += int(torch.count_nonzero(layer.weight.detach()))
        if layer.bias is not None:
            total += int(torch.count_nonzero(layer.bias.detach()))
    return total


@torch.no_grad()
def count_macs(model: nn.Module, in_shape: tuple[int, ...]) -> dict[str, int]:
    """MACs per weight layer for one input of shape `in_shape` (no batch dimension)."""
    macs: dict[str, int] = {}

    def hook(name: str):
        def record(module: nn.Module, inputs, output) -> None:
            if isinstance(module, nn.Linear):
                macs[name] = macs.get(name, 0) + output.numel() * module.in_features
            else:
                per_output = (module.in_channels // module.groups) * math.prod(module.kernel_size)
                macs[name] = macs.get(name, 0) + output.numel() * per_output
        return record

    probe_weight_layers(model, in_shape, hook)
    return macs


@torch.no_grad()
def count_activations(model: nn.Module, in_shape: tuple[int, ...]) -> dict[str, tuple[int, int]]:
    """(input elements, output elements) per weight layer for one input of shape `in_shape`
    (no batch dimension): the activations each layer reads and writes (summed over repeated calls)."""
    counts: dict[str, tuple[int, int]] = {}

    def hook(name: str):
        def record(module: nn.Module, inputs, output) -> None:
            seen_in, seen_out = counts.get(name, (0, 0))
            counts[name] = (seen_in + inputs[0].numel(), seen_out + output.numel())
        return record

    probe_weight_layers(model, in_shape, hook)
    return counts


def probe_weight_layers(model: nn.Module, in_shape: tuple[int, ...], hook) -> None:
    """One forward pass of a zero input (batch 1, eval mode, restored after) with `hook(name)`'s
    forward hook on every weight layer: how the per-layer counts see the layers run."""
    with eval_with_hooks(model, {name: hook(name) for name in weight_layers(model)}):
        model(torch.zeros(1, *in_shape, device=_device_of(model)))


def _device_of(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def layer_stats(model: nn.Module, in_shape: tuple[int, ...]) -> list[LayerStats]:
    """Per-layer table rows: shape, parameter count, weights, non-zero weights, MACs, bits per weight."""
    macs = count_macs(model, in_shape)
    rows = []
    for name, layer in weight_layers(model).items():
        w = layer.weight.detach()
        bias = layer.bias.numel() if layer.bias is not None else 0
        rows.append(LayerStats(name, type(layer).__name__.replace("Parametrized", ""), tuple(w.shape),
                               w.numel() + bias, w.numel(), int(torch.count_nonzero(w)), macs.get(name, 0),
                               weight_bits(layer)))
    return rows


def total_macs(model: nn.Module, in_shape: tuple[int, ...]) -> int:
    """Total MACs of the weight layers for one input."""
    return sum(count_macs(model, in_shape).values())


def weight_densities(model: nn.Module) -> dict[str, float]:
    """Fraction of non-zero weights per Conv / Linear layer."""
    return {n: float(torch.count_nonzero(m.weight.detach())) / m.weight.numel() for n, m in weight_layers(model).items()}


def nonzero_macs(model: nn.Module, in_shape: tuple[int, ...]) -> int:
    """MACs with a non-zero weight: each layer's MACs x its weight density (what hardware that skips
    zero weights can get down to: 2:4 Sparse Tensor Cores, the zero-skipping array of `hardware/`)."""
    densities = weight_densities(model)
    return round(sum(macs * densities.get(name, 1.0) for name, macs in count_macs(model, in_shape).items()))


def model_size_bits(model: nn.Module, weight_bits: Mapping[str, int] | int = 32, other_bits: int = 32) -> int:
    """Storage in bits when each layer's weights use `weight_bits[layer]` bits (dense storage).

    Biases, BatchNorm and all other parameters count at `other_bits`.
    """
    layers = weight_layers(model)
    bits = 0
    for name, layer in layers.items():
        per_weight = weight_bits if isinstance(weight_bits, int) else weight_bits.get(name, 32)
        bits += layer.weight.numel() * per_weight
    weight_ids = {id(p) for layer in layers.values() for p in _layer_weight_params(layer)}
    bits += sum(p.numel() * other_bits for p in _plain_params(model) if id(p) not in weight_ids)
    return bits


def _layer_weight_params(layer: nn.Module):
    if hasattr(layer, "parametrizations") and "weight" in layer.parametrizations:
        yield layer.parametrizations.weight.original
    else:
        yield layer.weight


def bit_operations(macs: Mapping[str, int], weight_bits: Mapping[str, int] | int = 32,
                   act_bits: Mapping[str, int] | int = 32) -> int:
    """BOPs = sum over layers of MACs x weight bits x activation bits."""
    def get(bits, name):
        return bits if isinstance(bits, int) else bits.get(name, 32)
    return sum(n * get(weight_bits, name) * get(act_bits, name) for name, n in macs.items())


def sqnr_db(reference: torch.Tensor, approx: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio 10 log10(sum r^2 / sum (r - a)^2) in dB; inf when exact."""
    reference, approx = reference.detach().double(), approx.detach().double()
    noise = torch.sum((reference - approx) ** 2).item()
    signal = torch.sum(reference**2).item()
    if noise == 0:
        return math.inf
    if signal == 0:
        return -math.inf
    return 10 * math.log10(signal / noise)


def cosine_similarity(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine of the angle between two tensors, flattened (1.0 = same direction)."""
    a, b = a.detach().double().flatten(), b.detach().double().flatten()
    denom = a.norm() * b.norm()
    if denom == 0:
        return 1.0 if torch.equal(a, b) else 0.0
    return float(a @ b / denom)
