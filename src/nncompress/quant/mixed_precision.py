"""Learned mixed precision: DiffQ and NIPQ as Methods, and NIPQ's three stages (lecture "NIPQ style
layerwise bitwidth training: 4-8 mixed precision"; Shin et al., CVPR 2023; Defossez et al. 2022).

- `DiffQ` ("diffq"): every targeted layer gets a `NoiseQuant` with a learnable bit-width; its
  regularizer is DiffQ's size penalty lambda M(b) / N = lambda sum_i B_i N_i / sum_i N_i (lambda
  per average bit: the slide's lambda M(b) with lambda divided by the weight count, so one lambda
  fits models of any size). Smaller lambda: more bits, higher accuracy; larger: a smaller model.
- `NIPQ` ("nipq"): DiffQ + PACT's learned range alpha; its regularizer pushes the average bits
  down to `target_bits`: lambda max(0, avg_bits - target_bits).
NIPQ's stages (the flow `flows/mixed_precision.py` runs them with `fit`):
1. train with pseudo-noise and the target penalty until the average bits reach the target;
2. push each layer to the candidate set (`candidate_pull`, then `snap_to_candidates`);
3. `to_real_quantization_`: replace each NoiseQuant by the linear `FakeQuant` at the chosen bits
   (per channel, range clipped at the learned alpha) and fine-tune; the model then converts with
   `convert_` like any LinearQuant model.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..config import Context, Method
from ..parametrize import attach, detach, original
from ..registry import register
from ..validate import UserError, check_int_range
from .fake import FakeQuant, tensor_range
from .granularity import PerChannel
from .noise import NoiseQuant, average_bits, layer_params, learned_bits, noise_quantizers
from .primitives import IntSpec
from .ptq import quantizable_layers


def _check_bits(min_bits: int, max_bits: int, init_bits: float) -> None:
    check_int_range("min_bits", min_bits, 1, 16)
    check_int_range("max_bits", max_bits, min_bits, 16)
    if not isinstance(init_bits, (int, float)) or not min_bits <= init_bits <= max_bits:
        raise UserError(f"init_bits={init_bits!r} must be a number in [min_bits, max_bits] = [{min_bits}, {max_bits}]")


def _attach_noise(method: Method, model: nn.Module, ctx: Context, *, bits: float, min_bits: int, max_bits: int,
                  learn_range: bool) -> nn.Module:
    layers = quantizable_layers(method, model, activations=False)
    for name, layer in layers.items():
        attach(layer, NoiseQuant(layer.weight, bits=bits, min_bits=min_bits, max_bits=max_bits,
                                 learn_range=learn_range), layer_name=name)
    ctx.record(method, layers=list(layers), init_bits=bits, bit_range=[min_bits, max_bits])
    return model


@register("diffq")
@dataclass(frozen=True, kw_only=True)
class DiffQ(Method):
    """Pseudo-quantization noise with a learned bit-width per layer and a model-size penalty.

    Args:
        size_weight: lambda of the penalty lambda * average bits (>= 0; the lecture's lambda M(b)).
        init_bits: every layer's starting bit-width; min_bits / max_bits: the range B is kept in.
    Train with `with pseudo_noise(model): nc.fit(model, data, config, regularizers=method.regularizers(model),
    on_step=lambda _: clamp_bits_(model))`; outside the block the layers quantize for real at round(B).
    """

    size_weight: float = 0.01
    init_bits: float = 8.0
    min_bits: int = 2
    max_bits: int = 8

    def __post_init__(self) -> None:
        _check_bits(self.min_bits, self.max_bits, self.init_bits)
        if not isinstance(self.size_weight, (int, float)) or not 0 <= self.size_weight < 1e6:
            raise UserError(f"size_weight={self.size_weight!r} must be a number in [0, 1e6)")

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        return _attach_noise(self, model, ctx, bits=self.init_bits, min_bits=self.min_bits, max_bits=self.max_bits,
                             learn_range=False)

    def regularizers(self, model: nn.Module) -> list:
        weight = float(self.size_weight)
        return [lambda m: weight * average_bits(m)]


@register("nipq")
@dataclass(frozen=True, kw_only=True)
class NIPQ(Method):
    """DiffQ's learned bit-widths + PACT's learned range, trained toward a target average bit-width.

    Args:
        target_bits: the average bits (weighted by parameter count) stage 1 drives toward.
        candidates: the bit-widths stage 2 snaps each layer to (e.g. (4, 8)).
        penalty: lambda of lambda * max(0, average bits - target_bits).
        init_bits, min_bits, max_bits: as in DiffQ.
    """

    target_bits: float = 5.0
    candidates: tuple[int, ...] = (4, 8)
    penalty: float = 1.0
    init_bits: float = 8.0
    min_bits: int = 2
    max_bits: int = 8

    def __post_init__(self) -> None:
        _check_bits(self.min_bits, self.max_bits, self.init_bits)
        object.__setattr__(self, "candidates", tuple(self.candidates))
        if not self.candidates:
            raise UserError("candidates must list at least one bit-width, e.g. (4, 8)")
        for bits in self.candidates:
            check_int_range("candidates[]", bits, self.min_bits, self.max_bits)
        low = min(self.candidates)
        if not isinstance(self.target_bits, (int, float)) or not low <= self.target_bits <= self.max_bits:
            raise UserError(f"target_bits={self.target_bits!r} must be in [min(candidates), max_bits] = "
                            f"[{low}, {self.max_bits}] (no assignment of candidates can average below {low})")
        if not isinstance(self.penalty, (int, float)) or not 0 <= self.penalty < 1e6:
            raise UserError(f"penalty={self.penalty!r} must be a number in [0, 1e6)")

    def apply(self, model: nn.Module, ctx: Context) -> nn.Module:
        return _attach_noise(self, model, ctx, bits=self.init_bits, min_bits=self.min_bits, max_bits=self.max_bits,
                             learn_range=True)

    def regularizers(self, model: nn.Module) -> list:
        weight, target = float(self.penalty), float(self.target_bits)
        return [lambda m: weight * torch.relu(average_bits(m) - target)]


def candidate_pull(candidates: tuple[int, ...], weight: float):
    """Stage 2 regularizer: weight * sum_i N_i (B_i - c_i)^2 / N, c_i the candidate nearest B_i
    (pushes each layer's bits onto the candidate set while training goes on)."""
    grid = torch.tensor(sorted(candidates), dtype=torch.float32)

    def pull(model: nn.Module) -> torch.Tensor:
        counts = layer_params(model)
        total = sum(counts.values())
        terms = []
        for name, q in noise_quantizers(model).items():
            b = q.effective_bits()
            nearest = grid[torch.argmin((grid - b.detach().cpu()).abs())].to(b.device)
            terms.append(counts[name] * (b - nearest) ** 2)
        return weight * torch.stack(terms).sum() / total
    return pull


def snap_to_candidates(bits: dict[str, float], counts: dict[str, int], candidates: tuple[int, ...],
                       target_bits: float) -> dict[str, int]:
    """Each layer to its nearest candidate (ties go up); while the weighted average exceeds
    `target_bits`, lower the layer that learned the fewest bits among those that can still go down
    (the one the training found least sensitive); then raise layers, most learned bits first, to
    higher candidates while the average stays <= target_bits. The result averages <= target_bits
    whenever the lowest candidate allows it."""
    grid = sorted(set(candidates))
    chosen = {n: min(grid, key=lambda c: (abs(c - b), -c)) for n, b in bits.items()}
    total = sum(counts.values())

    def avg() -> float:
        return sum(chosen[n] * counts[n] for n in chosen) / total

    while avg() > target_bits + 1e-9:
        lowerable = [n for n in chosen if chosen[n] > grid[0]]
        if not lowerable:
            break
        name = min(lowerable, key=lambda n: (bits[n], -counts[n]))
        chosen[name] = max(c for c in grid if c < chosen[name])
    for name in sorted(chosen, key=lambda n: -bits[n]):  # spend what is left: most-wanted bits first
        for c in (c for c in grid if c > chosen[name]):
            before = chosen[name]
            chosen[name] = c
            if avg() > target_bits + 1e-9:
                chosen[name] = before
                break
    return chosen


def weighted_average(bits: dict[str, int | float], counts: dict[str, int]) -> float:
    """sum B_i N_i / sum N_i."""
    return sum(bits[n] * counts[n] for n in bits) / sum(counts[n] for n in bits)


@torch.no_grad()
def set_bits_(model: nn.Module, bits: dict[str, float]) -> None:
    """Set the NoiseQuant bit-widths (e.g. to the snapped candidates)."""
    quantizers = noise_quantizers(model)
    for name, value in bits.items():
        quantizers[name].bits.fill_(float(value))


def to_real_quantization_(model: nn.Module, bits: dict[str, int] | None = None) -> dict[str, int]:
    """Stage 3: replace every NoiseQuant by a symmetric per-channel `FakeQuant` (kind "linear") at
    `bits` (default: round(B) of each layer), its range the weight's per-channel min / max clipped at
    the learned alpha (NIPQ). Returns the bits used. The model then fine-tunes with the STE and
    converts with `convert_`."""
    quantizers = noise_quantizers(model)
    chosen = {n: q.int_bits() for n, q in quantizers.items()} if bits is None else dict(bits)
    modules = dict(model.named_modules())
    for name, q in quantizers.items():
        layer = modules[name]
        w = original(layer).detach()
        lo, hi = tensor_range(w, PerChannel(0))
        if q.alpha is not None:
            alpha = q.alpha.detach().abs()
            lo, hi = torch.maximum(lo, -alpha), torch.minimum(hi, alpha)
        detach(layer, NoiseQuant)
        spec = IntSpec(bits=int(chosen[name]), signed=True, symmetric=True)
        attach(layer, FakeQuant.fit(w, spec, PerChannel(0), (lo, hi)), layer_name=name)
    return chosen


def bits_report(model: nn.Module) -> dict[str, object]:
    """Per-layer learned bits, parameter counts and the weighted average."""
    bits, counts = learned_bits(model), layer_params(model)
    return {"bits": bits, "params": counts, "average_bits": weighted_average(bits, counts)}
