"""The parametrization contract every weight transform follows (masks, fake quantizers, codebooks).

A `WeightTransform` is registered on a layer's `weight` (or `bias`) with `torch.nn.utils.parametrize`,
so the model keeps its parameters (optimizers keep working), trains through the transform, and keeps
its `state_dict` keys (`weight` becomes `parametrizations.weight.original`, transforms add buffers).
`forward(w)` is what the model computes with; `encode(w)` is what gets stored, as an `Encoded`
(kind, named tensors, JSON metadata) that the class's `decode` turns back into exactly `forward(w)`.
The container (`.nnc`), `convert_` and the exporters all go through `encode` / `decode`: a new
number format is one transform class registered with `@transform_kind`.

Composition rules (one place, `attach`): a tensor holds at most one transform of each role, masks
("mask") come before quantizers ("quantizer") in the chain, and a mask cannot be added after a
quantizer (prune first, then quantize, as in Deep Compression). Breaking a rule raises a
`CompositionError` that names the layer and what is already attached.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn
from torch.nn.utils import parametrize

from .validate import UserError

T = TypeVar("T", bound="WeightTransform")
ROLES = ("mask", "quantizer")


@dataclass
class Encoded:
    """What one transform stores for one tensor: `kind` (its registered name), named tensors
    (integer codes, scales, codebooks...) and JSON-able `meta` (shape, bits, granularity...).

    `meta["int_ranges"]` ({tensor name: [lo, hi]}) declares the range an integer tensor can take
    by construction (e.g. int4 codes [-7, 7]), so storage may pack it in ceil(log2(hi - lo + 1))
    bits whatever values this particular tensor happens to hold."""

    kind: str
    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)


#: kind name -> transform class; filled by `@transform_kind` (decoding looks the class up here).
TRANSFORM_KINDS: dict[str, type[WeightTransform]] = {}


def transform_kind(name: str):
    """Class decorator: register a WeightTransform under `name` for `Encoded.kind`."""
    def wrap(cls: type[T]) -> type[T]:
        if name in TRANSFORM_KINDS and TRANSFORM_KINDS[name] is not cls:
            raise ValueError(f"transform kind {name!r} is already registered by {TRANSFORM_KINDS[name].__name__}")
        cls.kind = name
        TRANSFORM_KINDS[name] = cls
        return cls
    return wrap


class CompositionError(UserError):
    """A method cannot be applied on top of what a layer already carries (the message says why)."""


class WeightTransform(nn.Module):
    """Base class of weight parametrizations: subclasses implement `forward(w)`, `encode(w)` and
    the classmethod `decode(encoded)`.

    `role`: "mask" (pruning: comes first in a chain) or "quantizer" (at most one per tensor).
    `storage_bits`: bits per stored weight after this transform (None: it does not change them).
    """

    kind: ClassVar[str] = "transform"
    role: ClassVar[str] = "quantizer"
    storage_bits: int | None = None

    def forward(self, w: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def encode(self, w: torch.Tensor) -> Encoded:
        """What represents `forward(w)` in storage (default: the transformed tensor itself)."""
        return Encoded(self.kind, {"value": self.forward(w).detach()})

    @classmethod
    def decode(cls, encoded: Encoded) -> torch.Tensor:
        """Rebuild exactly what `forward` computed from `encode`'s output."""
        return encoded.tensors["value"]


def decode(encoded: Encoded) -> torch.Tensor:
    """Decode any `Encoded` with the transform class registered for its kind."""
    if encoded.kind not in TRANSFORM_KINDS:
        raise UserError(f"unknown transform kind {encoded.kind!r}; known: {', '.join(sorted(TRANSFORM_KINDS))}")
    return TRANSFORM_KINDS[encoded.kind].decode(encoded)


def transforms(layer: nn.Module, tensor_name: str = "weight") -> list[nn.Module]:
    """The parametrizations on `layer.<tensor_name>`, outermost last (empty if none)."""
    if not parametrize.is_parametrized(layer, tensor_name):
        return []
    return list(layer.parametrizations[tensor_name])


def encode_chain(layer: nn.Module, tensor_name: str = "weight") -> list[Encoded]:
    """Each transform's `encode` of its own input, innermost first (the last one decodes to what the
    layer computes with)."""
    value = original(layer, tensor_name).detach()
    out = []
    for t in transforms(layer, tensor_name):
        out.append(t.encode(value))
        value = t(value).detach()
    return out


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


def check_attachable(layer: nn.Module, role: str, tensor_name: str = "weight", layer_name: str = "",
                     new: str = "quantizer") -> None:
    """Raise CompositionError if a transform of `role` may not be added to `layer.<tensor_name>`
    (methods call this for every layer before changing any, so a refused call changes nothing)."""
    where = f"{layer_name or type(layer).__name__}.{tensor_name}"
    for existing in transforms(layer, tensor_name):
        if getattr(existing, "role", "quantizer") == "stored":
            raise CompositionError(f"{where} holds stored integer codes (convert_ ran); apply every method before convert_")
        if getattr(existing, "role", "quantizer") != "quantizer":
            continue
        if role == "quantizer":
            raise CompositionError(
                f"{where} is already quantized ({type(existing).__name__}: {existing.extra_repr()}); a second "
                f"{new} would stack two quantizers. Call nc.remove_quantization_(model) first, "
                f"or leave the layer out with targets=Select(exclude=({layer_name!r},))")
        raise CompositionError(
            f"{where} is already quantized ({type(existing).__name__}); prune before quantizing "
            "(masks must come first so the quantizer sees the pruned weights)")


def attach(layer: nn.Module, transform: WeightTransform, tensor_name: str = "weight", *,
           layer_name: str = "") -> WeightTransform:
    """Register `transform` on `layer.<tensor_name>` after the transforms already there, following
    the composition rules above; `unsafe` keeps shapes free."""
    check_attachable(layer, getattr(transform, "role", "quantizer"), tensor_name, layer_name, type(transform).__name__)
    register_transform(layer, tensor_name, transform)
    return transform


def register_transform(layer: nn.Module, tensor_name: str, transform: nn.Module) -> None:
    """torch's `register_parametrization` (unsafe: shapes free) on a class of `layer`'s own."""
    _own_class(layer)
    parametrize.register_parametrization(layer, tensor_name, transform, unsafe=True)


def unregister_transforms(layer: nn.Module, tensor_name: str) -> None:
    """torch's `remove_parametrizations` (the original tensor kept as is) on a class of `layer`'s own."""
    _own_class(layer)
    parametrize.remove_parametrizations(layer, tensor_name, leave_parametrized=False)


def _own_class(layer: nn.Module) -> None:
    """Give an already parametrized `layer` a class of its own before its parametrizations change:
    torch adds and deletes each parametrized tensor's property on the module's class, which a deep
    copy shares, so quantizing a copy's bias gave the original a `bias` property without a
    parametrization (KeyError on `original.bias`), and converting a copy took the original's
    `weight` away."""
    if parametrize.is_parametrized(layer):
        cls = layer.__class__
        namespace = {k: v for k, v in cls.__dict__.items() if k not in ("__dict__", "__weakref__")}
        layer.__class__ = type(cls.__name__, cls.__bases__, namespace)


def detach(layer: nn.Module, drop: type[WeightTransform] | tuple[type[WeightTransform], ...],
           tensor_name: str = "weight") -> None:
    """Remove the transforms of type `drop` from `layer.<tensor_name>`, keeping the others (and the
    original tensor) as they are."""
    chain = transforms(layer, tensor_name)
    keep = [t for t in chain if not isinstance(t, drop)]
    if len(keep) == len(chain):
        return
    value = original(layer, tensor_name).detach().clone()
    unregister_transforms(layer, tensor_name)
    with torch.no_grad():
        getattr(layer, tensor_name).copy_(value)
    for t in keep:
        register_transform(layer, tensor_name, t)


def squash_(model: nn.Module) -> nn.Module:
    """Remove every parametrization, keeping the values the model computes with; returns `model`.

    Afterwards the model has plain `nn.Linear` / `nn.Conv2d` layers and its outputs are unchanged
    (activation quantizers, which are not parametrizations, stay), converted models included.
    """
    for module in list(model.modules()):
        if parametrize.is_parametrized(module):
            values = {name: getattr(module, name).detach().clone() for name in module.parametrizations}
            # Not torch's remove_parametrizations: it deletes the property from the module's class, which
            # a deep copy shares (squashing a copy broke the original), and it writes the value into
            # `original` in place (a converted layer stores int codes there).
            module.__class__ = parametrize.type_before_parametrizations(module)
            del module.parametrizations
            for name, value in values.items():
                setattr(module, name, nn.Parameter(value, requires_grad=value.is_floating_point()))
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


@contextlib.contextmanager
def switched(objects: Iterable[object], attribute: str, value: object) -> Iterator[None]:
    """Within the block, `attribute` = `value` on each of `objects` (e.g. a training-only switch of
    some transforms); each one's previous value is restored afterwards."""
    objects = list(objects)
    before = [getattr(o, attribute) for o in objects]
    for o in objects:
        setattr(o, attribute, value)
    try:
        yield
    finally:
        for o, old in zip(objects, before, strict=True):
            setattr(o, attribute, old)
