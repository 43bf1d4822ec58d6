"""Dynamic network surgery (Guo, Yao & Chen, "Dynamic Network Surgery for Efficient DNNs", NeurIPS 2016):
prune *and splice*: pruned connections keep training and come back when they become important.

- Forward with W . T (T the binary mask), backward straight through the mask: the gradient of
  W . T is applied to every W, pruned or not (paper eq. 3-4), so a pruned weight can regrow.
  `SurgeryMask` is that parametrization: w * m + (w - w.detach()) * (1 - m), value w * m, gradient 1.
- Every `frequency` steps, with probability sigma(t) = (1 + gamma t)^-power (paper sec. 3.2), the
  mask is updated with hysteresis (eq. 2): T = 0 where |W| < a, T = 1 where |W| > b, unchanged in
  between. The paper sets a = 0.9 max(mu + c sigma, 0), b = 1.1 max(...) from |W|'s mean and std;
  here the center is the |W| quantile that leaves the layer's target density (a = 0.9 t,
  b = 1.1 t), so DNS reaches the densities the allocator or a hand setting asks for.
- `finish_surgery_` turns every SurgeryMask into a plain `Mask` (pruned originals zeroed): from then
  on pruned weights stay zero, and the layer encodes like any pruned layer.
Not a registered Method: its mask deliberately passes gradients to pruned weights, which the
conformance contract of pruning methods forbids; use it as a training callback.
"""
from __future__ import annotations

import random

import torch
from torch import nn

from ..parametrize import Encoded, WeightTransform, attach, detach, find_transform, original, transform_kind
from ..validate import UserError, check_fraction
from .mask import Mask, attach_mask


@transform_kind("surgery_mask")
class SurgeryMask(WeightTransform):
    """w -> w * mask in value, identity in gradient (pruned weights keep learning)."""

    role = "mask"

    def __init__(self, keep_mask: torch.Tensor):
        super().__init__()
        self.register_buffer("mask", keep_mask.detach().clone().bool())

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        m = self.mask.to(w.dtype)
        return w * m + (w - w.detach()) * (1 - m)

    def encode(self, w: torch.Tensor) -> Encoded:
        masked = (w * self.mask).detach()
        return Encoded("mask", {"keep": self.mask.clone(), "values": masked[self.mask]},
                       {"shape": list(self.mask.shape), "int_ranges": {"keep": [0, 1]}})

    @classmethod
    def decode(cls, encoded: Encoded) -> torch.Tensor:
        return Mask.decode(encoded)


def hysteresis_mask(weight: torch.Tensor, mask: torch.Tensor, density: float, margin: float = 0.1) -> torch.Tensor:
    """Guo 2016 eq. 2 around the |w| quantile t that keeps `density`: off below (1 - margin) t, on above
    (1 + margin) t, unchanged in between."""
    magnitude = weight.detach().abs()
    t = torch.quantile(magnitude.flatten().float(), 1.0 - density) if density < 1.0 else magnitude.min() - 1
    off, on = magnitude < (1 - margin) * t, magnitude > (1 + margin) * t
    return (mask | on) & ~off


class DynamicSurgery:
    """DNS as an `on_step` callback for `train.fit`: attach with `start(model)`, train, `finish_surgery_`.

    Args:
        densities: target density per layer name (every layer gets a SurgeryMask).
        frequency: steps between mask updates; gamma, power: sigma(t) = (1 + gamma t)^-power, the
            probability that an update happens (the paper: gamma 1e-4, power 1).
    """

    def __init__(self, model: nn.Module, densities: dict[str, float], *, frequency: int = 10, gamma: float = 1e-4,
                 power: float = 1.0, seed: int = 0):
        if frequency < 1:
            raise UserError(f"frequency={frequency} must be >= 1")
        for name, d in densities.items():
            check_fraction(f"densities[{name!r}]", d, allow_one=True)
        modules = dict(model.named_modules())
        missing = [n for n in densities if n not in modules]
        if missing:
            raise UserError(f"DynamicSurgery: no layer named {', '.join(missing)}")
        self.layers = {n: modules[n] for n in densities}
        self.densities, self.frequency, self.gamma, self.power = dict(densities), frequency, gamma, power
        self.rng = random.Random(seed)
        self.updates = 0
        for name, layer in self.layers.items():
            keep = hysteresis_mask(layer.weight, torch.zeros_like(layer.weight, dtype=torch.bool), self.densities[name], 0.0)
            attach(layer, SurgeryMask(keep), layer_name=name)

    def __call__(self, step: int) -> None:
        if step % self.frequency or self.rng.random() > (1 + self.gamma * step) ** -self.power:
            return
        self.updates += 1
        for name, layer in self.layers.items():
            surgery = find_transform(layer, SurgeryMask)
            surgery.mask.copy_(hysteresis_mask(original(layer), surgery.mask, self.densities[name]))


@torch.no_grad()
def finish_surgery_(model: nn.Module) -> dict[str, float]:
    """Replace every SurgeryMask by a plain Mask (pruned originals zeroed); returns the densities."""
    densities = {}
    for name, layer in model.named_modules():
        surgery = find_transform(layer, SurgeryMask) if hasattr(layer, "parametrizations") else None
        if surgery is None:
            continue
        keep = surgery.mask.clone()
        detach(layer, SurgeryMask)
        attach_mask(layer, keep, layer_name=name)
        densities[name] = float(keep.float().mean())
    return densities
