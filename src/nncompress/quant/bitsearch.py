"""Post-training bit-width search under an average-bits budget, per network / per layer / per neuron
(lecture "Mixed precision: per network, per layer, per neuron" in seeds 002; HAQ / HAWQ-style
allocation without training): the cheap baseline learned mixed precision (DiffQ, NIPQ) must beat.

1. Sensitivity, measured: each layer alone is quantized (symmetric, per channel, weight only) at
   every candidate bit-width b and the loss increase on calibration data is recorded,
   cost_l(b) = L(model with layer l at b bits) - L(float model).
2. Per neuron (output channel), the layer's measured cost is shared out in proportion to each
   channel's squared quantization error: cost_c(b) = cost_l(b) e_c(b) / sum_c' e_c'(b).
3. Greedy allocation (`allocate_bits`): every unit starts at the widest option; repeatedly lower
   the unit whose next step down costs least per saved bit (delta cost / (N_u delta b)) until the
   size-weighted average is <= the budget, then raise units again, best gain per bit first, while
   the average stays <= the budget. The result never exceeds the budget.
Per network is one bit-width for every layer: the widest option <= the budget.
`ChannelBitsQuant` (kind "channel_bits") quantizes each output channel at its own bit-width.
"""
from __future__ import annotations

import heapq
from collections.abc import Callable, Hashable, Sequence

import torch
from torch import nn

from ..parametrize import Encoded, WeightTransform, attach, detach, transform_kind
from ..validate import UserError, check_choice, check_int_range
from .fake import FakeQuant
from .granularity import PerChannel
from .primitives import TINY, int_dtype, round_ste
from .ptq import quantize_weight_

LEVELS = ("network", "layer", "channel")
DEFAULT_OPTIONS = (2, 3, 4, 5, 6, 7, 8)


def check_options(options: Sequence[int]) -> tuple[int, ...]:
    options = tuple(sorted(set(options)))
    if not options:
        raise UserError("bit options must list at least one bit-width, e.g. 2,3,4,5,6,7,8")
    for bits in options:
        check_int_range("bit option", bits, 2, 16)
    return options


def allocate_bits(costs: dict[Hashable, dict[int, float]], sizes: dict[Hashable, int],
                  budget: float) -> dict[Hashable, int]:
    """Greedy bit allocation: the bit-width of each unit (layer or channel) with
    sum_u b_u N_u / sum_u N_u <= `budget`, lowering the cheapest bits first (see the module docstring).
    `costs[u][b]` is the loss increase of unit u at b bits; every unit lists the same options."""
    units = list(costs)
    options = sorted(next(iter(costs.values())))
    if budget < options[0]:
        raise UserError(f"budget={budget} average bits is below the narrowest option {options[0]}")
    total = sum(sizes[u] for u in units)
    level = {u: len(options) - 1 for u in units}  # index into options
    used = sum(options[-1] * sizes[u] for u in units)
    limit = budget * total + 1e-9 * total

    def down_score(u: Hashable) -> float:
        i = level[u]
        saved = (options[i] - options[i - 1]) * sizes[u]
        return (costs[u][options[i - 1]] - costs[u][options[i]]) / saved

    heap = [(down_score(u), k, u) for k, u in enumerate(units) if level[u] > 0]
    heapq.heapify(heap)
    while used > limit and heap:
        _, k, u = heapq.heappop(heap)
        i = level[u]
        used -= (options[i] - options[i - 1]) * sizes[u]
        level[u] = i - 1
        if level[u] > 0:
            heapq.heappush(heap, (down_score(u), k, u))
    _refill(costs, sizes, options, level, used, limit, units)
    return {u: options[level[u]] for u in units}


def _refill(costs, sizes, options, level, used, limit, units) -> None:
    """Raise units one option at a time, best loss change per added bit first, while it fits (the
    budget is used up: a raise that does not lower the measured loss costs nothing either)."""
    def up_score(u: Hashable) -> float:
        i = level[u]
        return (costs[u][options[i + 1]] - costs[u][options[i]]) / ((options[i + 1] - options[i]) * sizes[u])

    heap = [(up_score(u), k, u) for k, u in enumerate(units) if level[u] < len(options) - 1]
    heapq.heapify(heap)
    while heap:
        score, k, u = heapq.heappop(heap)
        i = level[u]
        extra = (options[i + 1] - options[i]) * sizes[u]
        if used + extra > limit:
            continue
        used += extra
        level[u] = i + 1
        if level[u] < len(options) - 1:
            heapq.heappush(heap, (up_score(u), k, u))


def layer_costs(model: nn.Module, layers: dict[str, nn.Module], options: Sequence[int],
                loss: Callable[[nn.Module], float]) -> tuple[float, dict[str, dict[int, float]]]:
    """(float loss, cost_l(b)): the loss increase with only layer l quantized to b bits (weight
    only, symmetric per channel, min-max), measured with `loss(model)`; the model is left as it was."""
    base = loss(model)
    costs: dict[str, dict[int, float]] = {}
    for name, layer in layers.items():
        costs[name] = {}
        for bits in options:
            quantize_weight_(layer, bits, PerChannel(0), layer_name=name)
            try:
                costs[name][bits] = loss(model) - base
            finally:
                detach(layer, FakeQuant)
    return base, costs


def channel_error(w: torch.Tensor, bits: int) -> torch.Tensor:
    """e_c(b): squared error of each output channel quantized alone (symmetric, per channel)."""
    rows = w.detach().reshape(w.shape[0], -1).float()
    q_max = 2 ** (bits - 1) - 1
    scale = (rows.abs().amax(1, keepdim=True) / q_max).clamp_min(TINY)
    return ((torch.clamp(torch.round(rows / scale), -q_max, q_max) * scale - rows) ** 2).sum(1)


def channel_costs(layers: dict[str, nn.Module], costs: dict[str, dict[int, float]]) -> dict[tuple[str, int], dict[int, float]]:
    """cost_c(b) = cost_l(b) e_c(b) / sum e(b) for every output channel c of every layer l."""
    out: dict[tuple[str, int], dict[int, float]] = {}
    for name, layer in layers.items():
        for bits, cost in costs[name].items():
            err = channel_error(layer.weight, bits)
            share = err / err.sum().clamp_min(TINY)
            for c in range(err.numel()):
                out.setdefault((name, c), {})[bits] = float(cost * share[c])
    return out


@transform_kind("channel_bits")
class ChannelBitsQuant(WeightTransform):
    """Each output channel c quantized symmetrically at its own bit-width b_c (buffer `bits`):
    s_c = max|w_c| / (2^(b_c - 1) - 1), q in [-(2^(b_c - 1) - 1), 2^(b_c - 1) - 1]."""

    def __init__(self, w: torch.Tensor, bits: torch.Tensor):
        super().__init__()
        bits = torch.as_tensor(bits, dtype=torch.int32).flatten()
        if bits.numel() != w.shape[0] or int(bits.min()) < 2 or int(bits.max()) > 8:
            raise UserError(f"ChannelBitsQuant needs one bit-width in [2, 8] per output channel ({w.shape[0]}), "
                            f"got {bits.numel()} values in [{int(bits.min())}, {int(bits.max())}]")
        shape = (-1, *[1] * (w.dim() - 1))
        self.register_buffer("bits", bits.clone())
        q_max = (torch.exp2(bits.float() - 1) - 1).reshape(shape)
        amax = w.detach().abs().amax(tuple(range(1, w.dim())), keepdim=True).float()
        self.register_buffer("scale", torch.where(amax > TINY, amax / q_max, torch.ones_like(amax)))

    @property
    def storage_bits(self) -> int:  # type: ignore[override]
        return int(self.bits.max())

    def _q_max(self, w: torch.Tensor) -> torch.Tensor:
        return (torch.exp2(self.bits.float() - 1) - 1).reshape(-1, *[1] * (w.dim() - 1))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        q_max = self._q_max(w)
        return torch.clamp(round_ste(w / self.scale), -q_max, q_max) * self.scale

    def encode(self, w: torch.Tensor) -> Encoded:
        q_max = self._q_max(w)
        codes = torch.clamp(torch.round(w.detach() / self.scale), -q_max, q_max).to(int_dtype(8, True))
        meta = {"shape": list(w.shape), "bits": int(self.bits.max()), "int_ranges": {"codes": [-127, 127]}}
        return Encoded(self.kind, {"codes": codes, "scale": self.scale.clone(), "bits": self.bits.clone()}, meta)

    @classmethod
    def decode(cls, encoded: Encoded) -> torch.Tensor:
        return encoded.tensors["codes"].float() * encoded.tensors["scale"].float()

    def extra_repr(self) -> str:
        return f"bits per channel in [{int(self.bits.min())}, {int(self.bits.max())}]"


def apply_bits_(layers: dict[str, nn.Module], assignment: dict, level: str) -> None:
    """Quantize `layers` (weights only) with an allocation from `search_bits`."""
    for name, layer in layers.items():
        if level == "channel":
            bits = torch.tensor([assignment[(name, c)] for c in range(layer.weight.shape[0])])
            attach(layer, ChannelBitsQuant(layer.weight, bits), layer_name=name)
        else:
            quantize_weight_(layer, assignment[name], PerChannel(0), layer_name=name)


def search_bits(model: nn.Module, layers: dict[str, nn.Module], budget: float, level: str,
                loss: Callable[[nn.Module], float], options: Sequence[int] = DEFAULT_OPTIONS,
                costs: dict[str, dict[int, float]] | None = None) -> dict:
    """Bit allocation at `level` ("network", "layer" or "channel") with average bits <= `budget`
    (weighted by parameter count). Returns {"bits": per layer or (layer, channel), "average_bits",
    "layer_costs"}; pass `costs` from an earlier `layer_costs` call to skip measuring again."""
    check_choice("level", level, LEVELS)
    options = check_options(options)
    if budget < options[0]:
        raise UserError(f"budget={budget} average bits is below the narrowest option {options[0]}")
    sizes = {n: m.weight.numel() for n, m in layers.items()}
    if level == "network":
        bits = max(b for b in options if b <= budget + 1e-9)
        assignment: dict = {n: bits for n in layers}
        return {"bits": assignment, "average_bits": float(bits), "layer_costs": costs}
    if costs is None:
        costs = layer_costs(model, layers, options, loss)[1]
    if level == "layer":
        assignment = allocate_bits(costs, sizes, budget)  # type: ignore[arg-type]
        avg = sum(assignment[n] * sizes[n] for n in layers) / sum(sizes.values())
    else:
        ch_costs = channel_costs(layers, costs)
        ch_sizes = {(n, c): sizes[n] // layers[n].weight.shape[0] for n, c in ch_costs}
        assignment = allocate_bits(ch_costs, ch_sizes, budget)  # type: ignore[arg-type]
        avg = sum(assignment[u] * ch_sizes[u] for u in ch_costs) / sum(ch_sizes.values())
    return {"bits": assignment, "average_bits": avg, "layer_costs": costs}
