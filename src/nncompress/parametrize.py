"""The parametrization contract every weight transform follows (masks, fake quantizers, codebooks).

A `WeightTransform` is registered on a layer's `weight` with `torch.nn.utils.parametrize`, so the
model keeps its parameters (optimizers keep working), trains through the transform, and keeps its
`state_dict` keys (`weight` becomes `parametrizations.weight.original`, transforms add buffers).
`forward(w)` is what the model computes with; `encode(w)` is what gets stored.
"""
from __future__ import annotations

from typing import TypeVar

import torch
from torch import nn
from torch.nn.utils import parametrize

T = TypeVar("T", bound="WeightTransform")


class WeightTransform(nn.Module):
    """Base class of weight parametrizations: subclasses implement `forward(w)` and `encode(w)`.

    `storage_bits`: bits per stored weight after this transform (None: it does not change them).
    """

    storage_bits: int | None = None

    def forward(self, w: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def encode(self, w: torch.Tensor) -> dict[str, torch.Tensor]:
        """The tensors that represent `w` in storage (default: the transformed weight itself)."""
        return {"weight": self.forward(w).detach()}

    def decode(self, encoded: dict[str, torch.Tensor]) -> torch.Tensor:
        """Rebuild exactly what `forward` computed from `encode`'s tensors."""
        return encoded["weight"]


def transforms(layer: nn.Module, tensor_name: str = "weight") -> list[nn.Module]:
    """The parametrizations on `layer.<tensor_name>`, outermost last (empty if none)."""
    if not parametrize.is_parametrized(layer, tensor_name):
        return []
    return list(layer.parametrizations[tensor_name])


def weight_bits(layer: nn.Module) -> int:
    """Bits per stored weight of `layer`: the narrowest transform's `storage_bits`, else its dtype's."""
    bits = [t.storage_bits for t in transforms(layer) if getattr(t, "storage_bits", None)]
    return min(bits) if bits else original(layer).element_size() * 8


def find_transform(layer: nn.Module, cls: type[T], tensor_name: str = "weight") -> T | None:
    """The first parametrization of type `cls` on `layer.<tensor_name>`, or None."""
    return next((t for t in transforms(layer, tensor_name) if isinstance(t, cls)), None)


def original(layer: nn.Module, tensor_name: str = "weight") -> torch.Tensor:
    """The trainable tensor behind a (possibly parametrized) weight."""
    if parametrize.is_parametrized(layer, tensor_name):
        return layer.parametrizations[tensor_name].original
    return getattr(layer, tensor_name)


def attach(layer: nn.Module, transform: WeightTransform, tensor_name: str = "weight") -> WeightTransform:
    """Register `transform` on `layer.<tensor_name>` (after any already there); `unsafe` keeps shapes free."""
    parametrize.register_parametrization(layer, tensor_name, transform, unsafe=True)
    return transform


def squash_(model: nn.Module) -> nn.Module:
    """Remove every parametrization, keeping the values the model computes with; returns `model`.

    Afterwards the model has plain `nn.Linear` / `nn.Conv2d` layers and its outputs are unchanged.
    """
    for module in list(model.modules()):
        if parametrize.is_parametrized(module):
            for name in list(module.parametrizations.keys()):
                parametrize.remove_parametrizations(module, name, leave_parametrized=True)
    return model


def plain_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's own tensors under their unparametrized names (`fc1.weight`, not
    `fc1.parametrizations.weight.original`); transform buffers (masks, scales) are left out.
    The tensors are the live ones: copy into them to change the model."""
    state = {}
    for key, value in model.state_dict(keep_vars=True).items():
        if ".parametrizations." in key:
            head, _, tail = key.partition(".parametrizations.")
            tensor_name, _, rest = tail.partition(".")
            if rest != "original":
                continue
            key = f"{head}.{tensor_name}"
        state[key] = value
    return state
