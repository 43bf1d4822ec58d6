"""Calibration observers: watch tensors, then say which range [r_min, r_max] to quantize ("Calibration and
clipping" in Edge Computing Lecture 06 "Quantization and Pruning": run a batch, get the distribution, get rid
of outliers; the clipped range then gives S = (r_max - r_min) / (q_max - q_min)).

- `minmax`: the extremes seen (per tensor, or per channel along `axis`).
- `ema`: exponential moving average of each batch's extremes (TF / PyTorch style, momentum 0.1).
- `percentile`: the p-th and (100 - p)-th percentiles of the values seen.
- `mse`: the clipping range (a fraction of the extremes) that minimises the mean squared
  quantization error on the values seen (a grid search).
- `entropy`: TensorRT's KL-divergence calibration (Migacz 2017): the threshold whose quantized
  2,048-bin histogram is closest to the original one.
The sample-based observers keep a bounded random sample (2^20 values) of everything observed.
"""
from __future__ import annotations

import torch

from ..validate import UserError, unknown_name_error

SAMPLE_CAP = 1 << 20


class Observer:
    """Base: `observe(x)` for each batch, then `range()`; `axis` keeps one range per channel."""

    def __init__(self, axis: int | None = None, bits: int = 8, symmetric: bool = False):
        self.axis, self.bits, self.symmetric = axis, bits, symmetric
        self.lo: torch.Tensor | None = None
        self.hi: torch.Tensor | None = None

    def _extremes(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.axis is None:
            return x.min(), x.max()
        flat = x.detach().movedim(self.axis, 0).reshape(x.shape[self.axis], -1)
        return flat.min(1).values, flat.max(1).values

    def observe(self, x: torch.Tensor) -> None:
        x = x.detach().float()
        if not torch.isfinite(x).all():
            raise UserError("observed tensor contains NaN or inf: check the model and the calibration data")
        lo, hi = self._extremes(x)
        self.lo = lo if self.lo is None else torch.minimum(self.lo, lo)
        self.hi = hi if self.hi is None else torch.maximum(self.hi, hi)

    def range(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.lo is None or self.hi is None:
            raise UserError(f"{type(self).__name__} has observed nothing: run calibration data through the model")
        return self.lo, self.hi


class MinMaxObserver(Observer):
    pass


class MovingAverageObserver(Observer):
    momentum = 0.1

    def observe(self, x: torch.Tensor) -> None:
        lo, hi = self._extremes(x.detach().float())
        if self.lo is None:
            self.lo, self.hi = lo, hi
        else:
            self.lo = self.lo + self.momentum * (lo - self.lo)
            self.hi = self.hi + self.momentum * (hi - self.hi)


class ValueSample:
    """A bounded, seeded uniform sample of observed values: at most `per_batch` values drawn from each
    tensor added, and (when `cap` is set) the pool cut to a random half of the cap whenever it
    grows past it. Range searches (percentile, MSE) run on the sample instead of every value."""

    def __init__(self, per_batch: int, cap: int | None = None, seed: int = 0):
        self.per_batch, self.cap = per_batch, cap
        self.samples: list[torch.Tensor] = []
        self.count = 0
        self.generator = torch.Generator().manual_seed(seed)

    def add(self, x: torch.Tensor) -> None:
        flat = x.detach().float().flatten()
        if flat.numel() > self.per_batch:
            flat = flat[torch.randint(flat.numel(), (self.per_batch,), generator=self.generator)]
        self.samples.append(flat)
        self.count += flat.numel()
        if self.cap is not None and self.count > self.cap:
            pool = torch.cat(self.samples)
            self.samples = [pool[torch.randperm(pool.numel(), generator=self.generator)[:self.cap // 2]]]
            self.count = self.samples[0].numel()

    def values(self) -> torch.Tensor:
        """Every sampled value (empty when nothing was added)."""
        return torch.cat(self.samples) if self.samples else torch.zeros(0)


class _SampleObserver(Observer):
    """Keeps a bounded uniform sample of the observed values (per-tensor only)."""

    def __init__(self, axis: int | None = None, bits: int = 8, symmetric: bool = False):
        if axis is not None:
            raise UserError(f"{type(self).__name__} supports per-tensor ranges only (axis=None); "
                             "use the 'minmax' or 'ema' observer per channel")
        super().__init__(None, bits, symmetric)
        self.sample = ValueSample(per_batch=max(1, SAMPLE_CAP // 16), cap=SAMPLE_CAP)

    def observe(self, x: torch.Tensor) -> None:
        super().observe(x)
        self.sample.add(x)

    def values(self) -> torch.Tensor:
        Observer.range(self)  # raises if nothing was observed
        return self.sample.values()


class PercentileObserver(_SampleObserver):
    percentile = 99.99

    def range(self) -> tuple[torch.Tensor, torch.Tensor]:
        v = self.values()
        q = torch.tensor([1 - self.percentile / 100, self.percentile / 100])
        lo, hi = torch.quantile(v, q)
        return lo, hi


class MSEObserver(_SampleObserver):
    def range(self) -> tuple[torch.Tensor, torch.Tensor]:
        from ..quant.primitives import IntSpec, choose_qparams, fake_quantize

        v = self.values()
        lo, hi = super().range()
        spec = IntSpec(bits=self.bits, signed=not (self.symmetric is False and lo >= 0), symmetric=self.symmetric)
        q_min, q_max = spec.q_range
        best, best_err = (lo, hi), float("inf")
        for ratio in torch.linspace(0.05, 1.0, 96):
            scale, zp = choose_qparams(lo * ratio, hi * ratio, spec)
            err = torch.mean((fake_quantize(v, scale, zp, q_min, q_max) - v) ** 2).item()
            if err < best_err:
                best, best_err = (lo * ratio, hi * ratio), err
        return best


class EntropyObserver(_SampleObserver):
    """TensorRT entropy calibration on a 2,048-bin histogram.

    Two-sided data (|r_min| > r_max / 2) is histogrammed as |x| and clipped symmetrically;
    one-sided data (ReLU outputs, normalized images) as x - r_min, clipping only the top.
    """

    bins = 2048

    def range(self) -> tuple[torch.Tensor, torch.Tensor]:
        v = self.values()
        lo, hi = super().range()
        two_sided = bool(lo < 0 and -lo > hi / 2)
        shifted = v.abs() if two_sided else v - lo
        top = float(shifted.max())
        if top == 0:
            return lo, hi
        hist = torch.histc(shifted, bins=self.bins, min=0, max=top).double()
        hist[0] = hist[1]  # the spike of exact zeros (ReLU, padding) is not information; as NVIDIA's
        # pytorch-quantization entropy calibrator does, give bin 0 its neighbour's count
        levels = (1 << (self.bits - 1)) if two_sided else (1 << self.bits)
        best_i, best_kl = self.bins, float("inf")
        for i in range(levels, self.bins + 1, 16):
            kl = _kl_for_threshold(hist, i, levels)
            if kl < best_kl:
                best_i, best_kl = i, kl
        threshold = torch.tensor((best_i + 0.5) * top / self.bins)
        if two_sided:
            return torch.maximum(lo, -threshold), torch.minimum(hi, threshold)
        return lo, torch.minimum(hi, lo + threshold)


def _kl_for_threshold(hist: torch.Tensor, i: int, levels: int) -> float:
    """KL(P || Q): P = the first i bins with the outliers folded into the last; Q = the first i bins
    *without* the outliers, merged into `levels` groups and spread evenly back over the group's
    non-empty bins, so clipping mass away costs divergence."""
    sliced = hist[:i]
    p = sliced.clone()
    p[-1] += hist[i:].sum()
    nonzero = p > 0
    edges = torch.linspace(0, i, levels + 1).round().long()
    q = torch.zeros_like(p)
    for a, b in zip(edges[:-1].tolist(), edges[1:].tolist()):
        if b > a:
            mass, count = sliced[a:b].sum(), nonzero[a:b].sum()
            if count:
                q[a:b] = torch.where(nonzero[a:b], mass / count, torch.zeros_like(p[a:b]))
    p, q = p / p.sum(), q / q.sum()
    mask = p > 0
    return float(torch.sum(p[mask] * torch.log(p[mask] / q[mask].clamp_min(1e-12))))


OBSERVERS: dict[str, type[Observer]] = {"minmax": MinMaxObserver, "ema": MovingAverageObserver,
                                        "percentile": PercentileObserver, "mse": MSEObserver,
                                        "entropy": EntropyObserver}


def make_observer(name: str, axis: int | None = None, bits: int = 8, symmetric: bool = False) -> Observer:
    """An observer by name: minmax, ema, percentile, mse or entropy."""
    if name not in OBSERVERS:
        raise unknown_name_error("observer", name, OBSERVERS)
    return OBSERVERS[name](axis=axis, bits=bits, symmetric=symmetric)

