"""`convert_`: from a fake-quantized (simulated) model to stored integer codes, in place.

Each parametrized weight or bias is replaced by one `Stored` parametrization that keeps the
`Encoded` form of its chain's last transform as real tensors of the stored dtype (the integer
codes become the parametrization's `original`, e.g. `fc1.parametrizations.weight.original`): int8 codes
(int4 / int2 codes and pruning masks bit-packed into uint8, see `bitpack.py`), scales, zero points,
codebooks. The layer computes with `decode(...)`, which equals what the simulated model computed
bit for bit, and `state_dict()` / `save_model` now hold the integer bytes: a W8 model is about 4x
smaller than float32 on disk, a W4 model about 8x. A converted layer no longer trains (its weight
is not a parameter any more); the integer engine and the exporters start from this form.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..bitpack import bits_for_range, pack_bits, unpack_bits
from ..parametrize import (TRANSFORM_KINDS, Encoded, WeightTransform, encode_chain, register_transform, transforms,
                           unregister_transforms)


def _stored_form(name: str, tensor: torch.Tensor, int_range: list[int] | None) -> tuple[torch.Tensor, dict | None]:
    """The tensor as stored: bit-packed when its declared integer range needs fewer than 8 bits."""
    if int_range is None:
        return tensor.detach().clone(), None
    lo, hi = int(int_range[0]), int(int_range[1])
    bits = bits_for_range(lo, hi)
    if bits >= 8:
        dtype = torch.int8 if -128 <= lo and hi <= 127 else torch.uint8 if 0 <= lo and hi <= 255 else tensor.dtype
        return tensor.detach().to(dtype).clone(), None
    return pack_bits(tensor.detach(), lo, bits), {"lo": lo, "bits": bits, "dtype": str(tensor.dtype).removeprefix("torch."),
                                                  "shape": list(tensor.shape)}


class Stored(WeightTransform):
    """A converted tensor: the Encoded of its last transform, kept as buffers; computes `decode`.

    The buffers adopt the shapes of a loaded state dict (a pruned layer's kept values depend on the
    data), so a recipe replayed on another batch loads any converted file of that recipe.
    """

    role = "stored"

    def __init__(self, encoded: Encoded):
        super().__init__()
        self.encoded_kind, self.meta = encoded.kind, dict(encoded.meta)
        self.packing: dict[str, dict] = {}
        int_ranges = encoded.meta.get("int_ranges", {})
        #: the tensor kept as the parametrization's `original` (the integer codes, whose shape the
        #: recipe fixes); the others are buffers of this module
        self.payload = next((n for n in ("codes", "indices", "keep") if n in encoded.tensors and n in int_ranges), None)
        self.payload_value: torch.Tensor | None = None
        for name, tensor in encoded.tensors.items():
            stored, packing = _stored_form(name, tensor, int_ranges.get(name))
            if packing is not None:
                self.packing[name] = packing
            if name == self.payload:
                self.payload_value = stored  # moved into `original` by convert_tensor_
            else:
                self.register_buffer(name, stored)

    @property
    def storage_bits(self) -> int | None:  # type: ignore[override]
        """The kind's fixed width (e.g. a mask's 1 bit), else the width its encoding recorded (a linear
        quantizer's or a codebook's index bits, which depend on the instance)."""
        fixed = TRANSFORM_KINDS[self.encoded_kind].storage_bits
        return fixed if isinstance(fixed, int) else self.meta.get("bits")

    def encoded(self, payload: torch.Tensor | None = None) -> Encoded:
        """The Encoded form, unpacked (what the transform kind's `decode` expects); `payload` is
        the layer's stored `original` (see `convert_tensor_`)."""
        stored = {n: b for n, b in self._buffers.items() if b is not None}
        if self.payload is not None and payload is not None:
            stored[self.payload] = payload
        tensors: dict[str, torch.Tensor] = {}
        for name, tensor in stored.items():
            spec = self.packing.get(name)
            if spec is None:
                tensors[name] = tensor
                continue
            codes = unpack_bits(tensor, spec["lo"], spec["bits"], int(torch.Size(spec["shape"]).numel()))
            tensors[name] = codes.to(getattr(torch, spec["dtype"])).view(spec["shape"])
        return Encoded(self.encoded_kind, tensors, dict(self.meta))

    def forward(self, payload: torch.Tensor) -> torch.Tensor:
        return TRANSFORM_KINDS[self.encoded_kind].decode(self.encoded(payload))

    def encode(self, payload: torch.Tensor) -> Encoded:
        return self.encoded(payload)

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        for name in list(self._buffers):
            incoming = state_dict.get(prefix + name)
            if incoming is not None and self._buffers[name] is not None and incoming.shape != self._buffers[name].shape:
                self._buffers[name] = torch.empty_like(incoming)
                if name in self.packing:  # a packed tensor's element count follows the byte count
                    self._resize_packed(name, incoming.numel())
        super()._load_from_state_dict(state_dict, prefix, *args)

    def _resize_packed(self, name: str, n_bytes: int) -> None:
        spec = self.packing[name]
        if len(spec["shape"]) == 1:
            spec["shape"] = [n_bytes * 8 // spec["bits"]]

    def extra_repr(self) -> str:
        return f"{self.encoded_kind}, " + ", ".join(f"{n}: {tuple(b.shape)} {str(b.dtype).removeprefix('torch.')}"
                                                    for n, b in self._buffers.items() if b is not None)


def convert_tensor_(layer: nn.Module, tensor_name: str) -> Stored | None:
    """Replace `layer.<tensor_name>`'s transform chain by its stored form; None if untransformed."""
    chain = encode_chain(layer, tensor_name)
    if not chain or transforms(layer, tensor_name)[-1].role == "stored":
        return None
    stored = Stored(chain[-1])
    unregister_transforms(layer, tensor_name)
    delattr(layer, tensor_name)
    payload, stored.payload_value = stored.payload_value, None
    layer.register_buffer(tensor_name, payload if payload is not None else torch.empty(0))
    register_transform(layer, tensor_name, stored)
    return stored


def convert_(model: nn.Module) -> nn.Module:
    """Turn every transformed weight and bias of `model` into stored integer codes; returns `model`.

    Outputs are unchanged bit for bit (`Stored.forward` is the transform's exact `decode`).
    Example:
        >>> import nncompress as nc, torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(64, 64))
        >>> _ = nc.quantize_(net, nc.LinearQuant(weight_bits=4, act_bits=None))
        >>> x = torch.randn(2, 64); before = net(x)
        >>> _ = nc.convert_(net)
        >>> torch.equal(net(x), before), net.state_dict()["0.parametrizations.weight.original"].numel()
        (True, 2048)
    """
    for module in list(model.modules()):
        for tensor_name in ("weight", "bias"):
            if parametrize.is_parametrized(module, tensor_name):
                convert_tensor_(module, tensor_name)
    return model


def is_converted(model: nn.Module) -> bool:
    """True when some tensor of `model` is in stored (converted) form."""
    return any(isinstance(t, Stored) for m in model.modules() for name in ("weight", "bias")
               for t in transforms(m, name))
