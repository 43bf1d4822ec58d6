"""Weight oscillation in QAT, counted and damped (lecture "Gradient Instability due to Oscillations of
Quantized Values Makes Training Unstable" in seeds 000; Nagel et al., "Overcoming Oscillations in
Quantization-Aware Training", ICML 2022).

With the STE a latent weight near a decision threshold between two grid points keeps crossing it: its
integer code flips up, down, up... and as the learning rate decays such weights gather at the
threshold. An *oscillation* is a code change in the direction opposite to that weight's previous
change (codes 0, 1, 0, 1 oscillate twice; 0, 1, 2 never). `OscillationTracker` counts them after
every optimizer step (per epoch: flips and the share of weights that flipped back at least once),
keeps Nagel's oscillation frequency f <- m * o_t + (1 - m) * f, and, with `freeze_threshold`,
freezes weights with f above it at the rounded running mean of their codes (the transform must
support freezing: `LSQWeight`). `dampening_loss` is the other remedy, Nagel's
    L_damp = lambda * sum ((s round(w / s) - clip(w, -Q_N s, Q_P s)) ^ 2)  (s and the grid point detached),
which pulls latent weights towards their grid points, away from the thresholds.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..parametrize import original, transforms
from ..validate import UserError


def oscillations(prev_dir: torch.Tensor, delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(oscillated, new direction) for one step: a weight oscillates when its code changes (`delta`
    != 0) against the sign of its last change `prev_dir` (-1, 0 or +1; 0 = never changed).

        >>> osc, d = oscillations(torch.tensor([1., -1., 0., 1.]), torch.tensor([-1., -2., 1., 1.]))
        >>> osc.tolist(), d.tolist()
        ([True, False, False, False], [-1.0, -1.0, 1.0, 1.0])
    """
    direction = torch.sign(delta)
    oscillated = (direction != 0) & (prev_dir != 0) & (direction != prev_dir)
    return oscillated, torch.where(direction != 0, direction, prev_dir)


def quantized_weights(model: nn.Module) -> dict[str, nn.Module]:
    """Layers whose last weight transform has integer codes (a `codes(w)` method: LSQWeight)."""
    return {n: m for n, m in model.named_modules() if transforms(m) and hasattr(transforms(m)[-1], "codes")}


class OscillationTracker:
    """Call after every optimizer step (`fit(..., on_step=tracker)`); `end_epoch()` closes an epoch.

    `momentum`: m of the frequency EMA; `freeze_threshold`: freeze weights whose frequency exceeds it
    (None: only count). `history` holds one dict per epoch: flips, oscillating fraction, frozen.
    """

    def __init__(self, model: nn.Module, *, momentum: float = 0.01, freeze_threshold: float | None = None):
        if not 0 < momentum <= 1:
            raise UserError(f"oscillation momentum={momentum} must be in (0, 1]")
        if freeze_threshold is not None and not 0 < freeze_threshold < 1:
            raise UserError(f"freeze_threshold={freeze_threshold} must be in (0, 1) (an oscillation frequency)")
        self.model, self.momentum, self.freeze_threshold = model, momentum, freeze_threshold
        self.layers = quantized_weights(model)
        self.state: dict[str, dict[str, torch.Tensor]] = {}
        for name, layer in self.layers.items():
            codes = self._codes(layer)
            self.state[name] = {"codes": codes, "dir": torch.zeros_like(codes), "freq": torch.zeros_like(codes),
                                "ema": codes.clone(), "epoch_osc": torch.zeros_like(codes, dtype=torch.bool),
                                "flips": torch.zeros((), dtype=torch.int64)}
        self.history: list[dict] = []

    @staticmethod
    def _codes(layer: nn.Module) -> torch.Tensor:
        value = original(layer).detach()
        for t in transforms(layer)[:-1]:
            value = t(value).detach()
        return transforms(layer)[-1].codes(value).float()

    @torch.no_grad()
    def __call__(self, step: int = 0) -> None:
        for name, layer in self.layers.items():
            self.update(name, self._codes(layer))
            if self.freeze_threshold is not None:
                self._freeze(name, transforms(layer)[-1])

    def update(self, name: str, codes: torch.Tensor) -> torch.Tensor:
        """Record one step's `codes` for layer `name`; returns which weights oscillated now."""
        s = self.state[name]
        osc, s["dir"] = oscillations(s["dir"], codes - s["codes"])
        s["codes"] = codes
        m = self.momentum
        s["freq"] = m * osc.float() + (1 - m) * s["freq"]
        s["ema"] = m * codes + (1 - m) * s["ema"]
        s["epoch_osc"] |= osc
        s["flips"] += int(osc.sum())
        return osc

    def _freeze(self, name: str, transform: nn.Module) -> None:
        s = self.state[name]
        newly = (s["freq"] > self.freeze_threshold) & ~transform.frozen
        if bool(newly.any()):
            transform.frozen_codes[newly] = torch.round(s["ema"][newly]).to(transform.frozen_codes.dtype)
            transform.frozen[newly] = True

    def end_epoch(self, epoch: int = 0, history: object = None) -> dict:
        """Close an epoch (usable as `fit(..., on_epoch=...)`): record and reset its counts."""
        total = sum(s["codes"].numel() for s in self.state.values())
        flips = sum(int(s["flips"]) for s in self.state.values())
        oscillating = sum(int(s["epoch_osc"].sum()) for s in self.state.values())
        frozen = sum(int(transforms(m)[-1].frozen.sum()) for m in self.layers.values()
                     if hasattr(transforms(m)[-1], "frozen"))
        row = {"epoch": len(self.history) + 1, "flips": flips, "oscillating_fraction": oscillating / max(total, 1),
               "frozen_fraction": frozen / max(total, 1)}
        self.history.append(row)
        for s in self.state.values():
            s["epoch_osc"].zero_()
            s["flips"].zero_()
        return row

    def state_dict(self) -> dict:
        """Everything needed to resume counting exactly (tensors and plain lists)."""
        return {"state": {n: {k: v.clone() for k, v in s.items()} for n, s in self.state.items()},
                "history": list(self.history)}

    def load_state_dict(self, saved: dict) -> None:
        for name, s in saved["state"].items():
            if name not in self.state:
                raise UserError(f"oscillation state for layer {name!r}, which this model does not quantize")
            self.state[name] = {k: v.clone() for k, v in s.items()}
        self.history = list(saved["history"])


def dampening_loss(weight: float) -> Callable[[nn.Module], torch.Tensor]:
    """A regularizer `model -> lambda * sum (s round(w/s) - clip(w, -Q_N s, Q_P s))^2` over LSQ weights."""
    if weight < 0:
        raise UserError(f"dampening weight={weight} must be >= 0")

    def damp(model: nn.Module) -> torch.Tensor:
        total = torch.zeros(())
        for layer in quantized_weights(model).values():
            t = transforms(layer)[-1]
            if not hasattr(t, "step"):
                continue
            w = original(layer)
            for inner in transforms(layer)[:-1]:
                w = inner(w)
            step = t.scale
            grid = (torch.clamp(torch.round(w.detach() / step), -t.q_n, t.q_p) * step)
            total = total + ((grid - torch.clamp(w, -t.q_n * step, t.q_p * step)) ** 2).sum()
        return weight * total

    return damp
