"""Pseudo-quantization noise with a learnable bit-width (DiffQ, Defossez et al. 2022; NIPQ, Shin et al.
CVPR 2023; lecture "DiffQ: Differentiable Model Compression via Pseudo Quantization Noise" and "NIPQ").

Rounding to B bits makes an error in [-Delta/2, Delta/2] with Delta = (max - min) / (2^B - 1).
DiffQ replaces it during training by noise of the same size,

    Q~(w, B) = w + (Delta / 2) U[-1, 1]          (variance Delta^2 / 12),

which is differentiable in B (dQ~/dB = dQ~/dDelta dDelta/dB, no straight-through estimator), so
each layer learns its own bit-width B_i. NIPQ adds PACT's learned range: the weight is clipped to
[-alpha, alpha] with a trainable alpha, and (max - min) = 2 alpha.

`NoiseQuant` (kind "noise") is the weight parametrization. It has two modes:
- noise (`pseudo_noise(model)` context, training mode only): the formula above;
- real quantization (the default, and always in eval mode): the affine grid
  min + Delta round((w - min) / Delta) at round(B) bits, with a straight-through round, so the
  model is deterministic, `encode` gives its integer codes and `decode` rebuilds it exactly.
B is a parameter kept in [min_bits, max_bits] (clamped in `forward`, and in place by
`clamp_bits_` after each optimizer step). `average_bits(model)` is sum B_i N_i / sum N_i, the
differentiable model size that DiffQ's and NIPQ's penalties act on.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from ..parametrize import Encoded, WeightTransform, switched, transform_kind, transforms
from ..validate import UserError
from .primitives import round_ste

BITS_LIMITS = (1, 16)  # bits a NoiseQuant may be configured with


def noise_step(lo: torch.Tensor, hi: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """Delta = (max - min) / (2^B - 1) (DiffQ), differentiable in the range and in B."""
    return (hi - lo) / (torch.exp2(bits) - 1)


def pseudo_quantize(w: torch.Tensor, step: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Q~(w) = w + (Delta/2) U[-1, 1]: the DiffQ pseudo-quantization noise (variance Delta^2 / 12)."""
    u = torch.rand(w.shape, generator=generator, dtype=w.dtype, device=w.device) * 2 - 1
    return w + step / 2 * u


@transform_kind("noise")
class NoiseQuant(WeightTransform):
    """A weight with a learnable bit-width `bits` (a scalar parameter) and, with `learn_range`, a
    learnable symmetric clipping level `alpha` (NIPQ / PACT); otherwise the range is the weight's
    own min / max (DiffQ)."""

    def __init__(self, w: torch.Tensor, *, bits: float, min_bits: int = 2, max_bits: int = 8,
                 learn_range: bool = False):
        super().__init__()
        if not BITS_LIMITS[0] <= min_bits <= max_bits <= BITS_LIMITS[1]:
            raise UserError(f"min_bits={min_bits}, max_bits={max_bits} must satisfy "
                            f"{BITS_LIMITS[0]} <= min_bits <= max_bits <= {BITS_LIMITS[1]}")
        if not min_bits <= bits <= max_bits:
            raise UserError(f"initial bits={bits} must be in [min_bits, max_bits] = [{min_bits}, {max_bits}]")
        self.min_bits, self.max_bits, self.learn_range = min_bits, max_bits, learn_range
        self.bits = nn.Parameter(torch.tensor(float(bits)))
        amax = w.detach().abs().amax().clamp_min(1e-8).float()
        self.alpha = nn.Parameter(amax.clone()) if learn_range else None
        self.noise = False  # set by `pseudo_noise`; acts in training mode only

    def effective_bits(self) -> torch.Tensor:
        """B clamped to [min_bits, max_bits] (the continuous, learned bit-width)."""
        return self.bits.clamp(self.min_bits, self.max_bits)

    def int_bits(self) -> int:
        """The integer bit-width real quantization uses: round(B), in range."""
        return int(torch.round(self.effective_bits().detach()))

    @property
    def storage_bits(self) -> int:  # type: ignore[override]
        """What `convert_` stores per weight for this transform: its declared range, `max_bits` (the
        learned width is `int_bits()`; NIPQ's stage 3 re-quantizes at it, and that stores it)."""
        return self.max_bits

    def _clipped_range(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(clipped w, min, max): PACT clip to [-alpha, alpha] (gradient to alpha where clipped), or
        the weight's own (detached) range."""
        if self.alpha is None:
            return w, w.detach().amin(), w.detach().amax()
        alpha = self.alpha.abs().clamp_min(1e-8)
        return torch.minimum(torch.maximum(w, -alpha), alpha), -alpha, alpha

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        w, lo, hi = self._clipped_range(w)
        if self.training and self.noise:
            return pseudo_quantize(w, noise_step(lo, hi, self.effective_bits()))
        bits = round_ste(self.effective_bits())
        step = torch.clamp(noise_step(lo, hi, bits), min=1e-12)
        codes = torch.clamp(round_ste((w - lo) / step), torch.zeros(()), torch.exp2(bits.detach()) - 1)
        return lo + codes * step

    def encode(self, w: torch.Tensor) -> Encoded:
        """Unsigned codes in [0, 2^round(B) - 1] and (min, Delta); the declared range is the largest
        allowed bit-width, so the stored shape does not depend on what B learned."""
        with torch.no_grad():
            w, lo, hi = self._clipped_range(w.detach())
            bits = torch.round(self.effective_bits())
            step = torch.clamp(noise_step(lo, hi, bits), min=1e-12)
            codes = torch.clamp(torch.round((w - lo) / step), torch.zeros(()), torch.exp2(bits) - 1)
        meta = {"shape": list(w.shape), "bits": int(bits), "int_ranges": {"codes": [0, (1 << self.max_bits) - 1]}}
        dtype = torch.uint8 if self.max_bits <= 8 else torch.int32
        return Encoded(self.kind, {"codes": codes.to(dtype), "min": lo.detach().reshape(1).clone(),
                                   "step": step.detach().reshape(1).clone()}, meta)

    @classmethod
    def decode(cls, encoded: Encoded) -> torch.Tensor:
        lo, step = encoded.tensors["min"].reshape(()), encoded.tensors["step"].reshape(())
        return lo + encoded.tensors["codes"].float() * step

    def extra_repr(self) -> str:
        rng = f", alpha={float(self.alpha.detach().abs()):.4g}" if self.alpha is not None else ""
        return f"bits={float(self.effective_bits().detach()):.2f} in [{self.min_bits}, {self.max_bits}]{rng}"


def noise_quantizers(model: nn.Module) -> dict[str, NoiseQuant]:
    """The NoiseQuant of every layer that has one, by layer name."""
    found = {}
    for name, module in model.named_modules():
        for t in transforms(module):
            if isinstance(t, NoiseQuant):
                found[name] = t
    return found


def layer_params(model: nn.Module) -> dict[str, int]:
    """N_i: the number of weights each NoiseQuant covers."""
    modules = dict(model.named_modules())
    return {name: modules[name].parametrizations.weight.original.numel() for name in noise_quantizers(model)}


def size_bits(model: nn.Module) -> torch.Tensor:
    """M(b) = sum_i B_i N_i, the weight bits of the model (DiffQ's model size), differentiable in B."""
    quantizers, counts = noise_quantizers(model), layer_params(model)
    if not quantizers:
        raise UserError("the model has no NoiseQuant layer: apply DiffQ or NIPQ first")
    return sum(q.effective_bits() * counts[n] for n, q in quantizers.items())  # type: ignore[return-value]


def average_bits(model: nn.Module) -> torch.Tensor:
    """sum_i B_i N_i / sum_i N_i: bits per weight over the NoiseQuant layers (weighted by size)."""
    return size_bits(model) / sum(layer_params(model).values())


def learned_bits(model: nn.Module) -> dict[str, float]:
    """The continuous bit-width each layer has learned."""
    return {n: float(q.effective_bits().detach()) for n, q in noise_quantizers(model).items()}


@torch.no_grad()
def clamp_bits_(model: nn.Module) -> None:
    """Project every B back into [min_bits, max_bits] (after an optimizer step), so a parameter
    that left the range does not sit where its gradient is zero."""
    for q in noise_quantizers(model).values():
        q.bits.clamp_(q.min_bits, q.max_bits)


@torch.no_grad()
def bit_step_(model: nn.Module, lr: float) -> None:
    """An extra SGD step on the bit-widths after the optimizer's, B_i -= lr (N / N_i) dL/dB_i, then
    `clamp_bits_`. The gradient of the size penalty on B_i is proportional to N_i / N, so without
    the N / N_i factor a small layer's bits would barely move; the rescaling changes the speed,
    not where the gradient vanishes. Call it from `fit(..., on_step=...)`."""
    counts = layer_params(model)
    total = sum(counts.values())
    for name, q in noise_quantizers(model).items():
        if q.bits.grad is not None:
            q.bits.sub_(lr * total / counts[name] * q.bits.grad)
    clamp_bits_(model)


@contextlib.contextmanager
def pseudo_noise(model: nn.Module, enabled: bool = True) -> Iterator[nn.Module]:
    """Within the block, NoiseQuant layers in training mode add pseudo-quantization noise instead of
    rounding (DiffQ / NIPQ training); the previous setting is restored afterwards."""
    with switched(noise_quantizers(model).values(), "noise", enabled):
        yield model
