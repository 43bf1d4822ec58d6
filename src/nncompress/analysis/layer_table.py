"""Han et al. 2015's per-layer table: weights, FLOP, activations % non-zero, weights % and FLOP % kept.

Han, Pool, Tran, Dally, "Learning both Weights and Connections for Efficient Neural Networks"
(NeurIPS 2015), Tables 2-3, quoted in Shanbhag's lecture (seed 003, "Results"): for LeNet-300-100
fc1 235K weights, 470K FLOP, Act% 38%, Weights% 8%, FLOP% 8%; fc2 30K, 60K, 65%, 9%, 4%; ...
The columns, as measured here (`han_table`):

- Weights, FLOP: the layer's weight count and 2 x MACs for one input (a multiply and an add).
- Act%: the fraction of the layer's output activations that are non-zero, measured on data with
  hooks as the next weight layer reads them (after ReLU and pooling); for the last layer, its output.
- Weights%: the fraction of weights kept (non-zero in the weight the model computes with).
- FLOP%: the fraction of FLOPs left when both zero weights and zero input activations are skipped:
  FLOP%_l = Weights%_l x Act%_{l-1}, with Act%_0 = 100% (the image is not a ReLU output). This
  reproduces Han's rows: fc2 9% x 38% = 3.4% ~ 4%, fc3 26% x 65% = 17%.
- Total: Weights% and FLOP% pooled over layers; Act% weighted by each layer's activation count
  (Han's LeNet-300-100 total 46% = (38% x 300 + 65% x 100 + 100% x 10) / 410).
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..batches import ForwardFn, feed, split_batch
from .hooks import eval_with_hooks
from .metrics import count_macs, probe_weight_layers, weight_layers


@dataclass
class LayerTableRow:
    """One row of Han's table (fractions in [0, 1])."""

    name: str
    weights: int
    flops: int
    act_nonzero: float
    activations: int  # output activations per input (the Act% weight of the total)
    weights_kept: float
    flops_kept: float

    def as_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def activation_density(model: nn.Module, batches: Iterable, *, max_batches: int | None = None,
                       forward_fn: ForwardFn | None = None) -> tuple[list[str], dict[str, float], float]:
    """Run `model` on `batches` and measure, per weight layer, the non-zero fraction of its input;
    returns (weight layers in the order they first ran, {layer: input density}, output density)."""
    layers = weight_layers(model)
    order: list[str] = []
    counts: dict[str, list[int]] = {}
    output = [0, 0]

    def pre_hook(name: str):
        def record(module: nn.Module, args: tuple) -> None:
            if name not in counts:
                order.append(name)
                counts[name] = [0, 0]
            counts[name][0] += int(torch.count_nonzero(args[0]))
            counts[name][1] += args[0].numel()
        return record

    with eval_with_hooks(model, {name: pre_hook(name) for name in layers}, pre=True):
        for i, batch in enumerate(batches):
            if max_batches is not None and i >= max_batches:
                break
            out = feed(model, batch, forward_fn)
            out = out[0] if isinstance(out, (tuple, list)) else out
            output[0] += int(torch.count_nonzero(out))
            output[1] += out.numel()
    return order, {n: c[0] / max(c[1], 1) for n, c in counts.items()}, output[0] / max(output[1], 1)


@torch.no_grad()
def _activations_per_input(model: nn.Module, in_shape: tuple[int, ...]) -> dict[str, int]:
    """Output elements of each weight layer for one input."""
    sizes: dict[str, int] = {}

    def hook(name: str):
        def record(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
            sizes.setdefault(name, out[0].numel())
        return record

    probe_weight_layers(model, in_shape, hook)
    return sizes


def han_table(model: nn.Module, batches: Iterable, *, max_batches: int | None = None,
              forward_fn: ForwardFn | None = None) -> list[LayerTableRow]:
    """Han 2015's table for `model` measured on `batches` (see the module doc); the last row is
    "total". Layers run in a chain are assumed (each layer's input is the previous one's output)."""
    batches = list(batches) if max_batches is None else [b for _, b in zip(range(max_batches), batches)]
    if not batches:
        raise ValueError("han_table needs at least one batch of data")
    order, input_density, out_density = activation_density(model, batches, forward_fn=forward_fn)
    in_shape = tuple(split_batch(batches[0]).args[0].shape[1:]) if forward_fn is None else None
    macs = count_macs(model, in_shape) if in_shape is not None else {}
    sizes = _activations_per_input(model, in_shape) if in_shape is not None else {}
    layers = weight_layers(model)
    rows = []
    for i, name in enumerate(order):
        weight = layers[name].weight.detach()
        kept = int(torch.count_nonzero(weight)) / weight.numel()
        act = input_density[order[i + 1]] if i + 1 < len(order) else out_density
        previous = 1.0 if i == 0 else rows[-1].act_nonzero
        rows.append(LayerTableRow(name, weight.numel(), 2 * macs.get(name, 0), act, sizes.get(name, 0), kept,
                                  kept * previous))
    rows.append(_total(rows))
    return rows


def _total(rows: list[LayerTableRow]) -> LayerTableRow:
    weights = sum(r.weights for r in rows)
    flops = sum(r.flops for r in rows)
    acts = sum(r.activations for r in rows)
    return LayerTableRow(
        "total", weights, flops, sum(r.act_nonzero * r.activations for r in rows) / max(acts, 1), acts,
        sum(r.weights_kept * r.weights for r in rows) / max(weights, 1),
        sum(r.flops_kept * r.flops for r in rows) / max(flops, 1))


def format_table(rows: list[LayerTableRow]) -> list[list[object]]:
    """Rows as Han prints them: Layer, Weights, FLOP, Act%, Weights%, FLOP% (K = thousands)."""
    def k(v: int) -> str:
        return f"{v / 1000:.1f}K" if v < 10_000 else f"{v / 1000:.0f}K"

    return [[r.name, k(r.weights), k(r.flops), f"{100 * r.act_nonzero:.0f}%", f"{100 * r.weights_kept:.1f}%",
             f"{100 * r.flops_kept:.1f}%"] for r in rows]
