"""A whole model to and from the `.nnc` in-memory form (`container.NncModel`), generically.

`encode_model` walks every tensor of the model's state: a parametrized one (weight or bias) is
stored as `encode_chain(layer, name)`, the Encoded of each of its transforms, innermost first;
any other tensor as its plain value. Decoding applies `TRANSFORM_KINDS[kind].decode` to each
chain's last stage, which by the transform contract reproduces exactly what the layer computed
with, so a decoded model is bit-exact with the encoded one.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..parametrize import TRANSFORM_KINDS, Encoded, encode_chain, plain_state
from ..validate import UserError
from ..zoo import MODELS, build_model
from .container import Coding, NncFormatError, NncModel


def parametrized_tensors(model: nn.Module) -> dict[str, tuple[nn.Module, str]]:
    """Plain state-dict name (`fc1.weight`) -> (layer, tensor name) of every parametrized tensor."""
    found = {}
    for module_name, module in model.named_modules():
        if parametrize.is_parametrized(module):
            for tensor_name in module.parametrizations.keys():
                found[f"{module_name}.{tensor_name}" if module_name else tensor_name] = (module, tensor_name)
    return found


def encode_model(model: nn.Module, model_desc: dict, meta: dict | None = None, coding: Coding = Coding()) -> NncModel:
    """Every tensor of `model`: transform chains for parametrized ones, plain values otherwise.

    `model_desc`: JSON describing the model, e.g. {"arch": "lenet300", "in_shape": [1, 28, 28],
    "num_classes": 10} for a zoo model (then `decode_model(nnc)` rebuilds it), or anything else
    for your own module (decode with `decode_model(nnc, model=YourNet())`). `coding`: the writer's
    storage choices (`Coding`: context-coded keep masks, format 3.2; the compact header, 3.3).
    """
    chained = parametrized_tensors(model)
    nnc = NncModel(dict(model_desc), meta=dict(meta or {}), coding=coding)
    for name, value in plain_state(model).items():
        if name in chained:
            nnc.chains[name] = encode_chain(*chained[name])
        else:
            nnc.tensors[name] = value.detach().cpu().clone()
    return nnc


MAX_GROUP_SIZE = 1 << 16  # as LinearQuant's group_size


def _check_linear_groups(name: str, encoded: Encoded) -> None:
    """A group granularity's size decides how far `decode` pads each row: bounded like
    LinearQuant's group_size, and the padded rows at most 16x the codes plus 2^20 elements."""
    granularity = encoded.meta.get("granularity")
    codes = encoded.tensors.get("codes")
    if not (isinstance(granularity, dict) and granularity.get("kind") == "group" and isinstance(codes, torch.Tensor)):
        return
    size = granularity.get("size")
    rows = codes.shape[0] if codes.dim() else 1
    if not (isinstance(size, int) and not isinstance(size, bool) and 1 <= size <= MAX_GROUP_SIZE
            and rows * size <= 16 * codes.numel() + (1 << 20)):
        raise NncFormatError(f"{name}: 'linear' stage granularity size={str(size)[:40]} must be an integer in "
                             f"[1, {MAX_GROUP_SIZE}] that pads {rows} rows of {list(codes.shape)} codes moderately")


def _meta_decode_shape(kind: str, encoded: Encoded) -> tuple[int, ...] | None:
    """The shape `decode` gives, computed on torch's meta device (no memory): catches broadcasts of
    crafted shapes (codes [1, n] x scale [n, 1]) before they allocate. None when the kind's decode
    depends on values (masks, boolean indexing) and cannot run on meta tensors."""
    tensors = {k: torch.empty(t.shape, dtype=t.dtype, device="meta") for k, t in encoded.tensors.items()}
    try:
        return tuple(TRANSFORM_KINDS[kind].decode(Encoded(kind, tensors, encoded.meta)).shape)
    except Exception:  # noqa: BLE001 - any failure here only means "decode for real, then check"
        return None


def decode_chain(name: str, chain: list, shape: tuple[int, ...] | None = None) -> torch.Tensor:
    """What a stored chain decodes to: its last stage through the registered transform class;
    with `shape` (the declared one), the decode's shape is checked on the meta device first."""
    kind = chain[-1].kind
    if kind not in TRANSFORM_KINDS:
        raise NncFormatError(f"{name}: transform kind {kind!r} is unknown to this nncompress "
                             f"(known: {', '.join(sorted(TRANSFORM_KINDS))}); a newer version wrote it?")
    if kind == "linear":
        _check_linear_groups(name, chain[-1])
    if shape is not None and (found := _meta_decode_shape(kind, chain[-1])) not in (None, tuple(shape)):
        raise NncFormatError(f"{name}: decodes to shape {list(found)}, the file says {list(shape)} (its {kind!r} "
                             "stage, checked on the meta device before decoding)")
    try:
        value = TRANSFORM_KINDS[kind].decode(chain[-1])
    except (KeyError, IndexError, RuntimeError, TypeError, ValueError, AttributeError, OverflowError) as err:
        raise NncFormatError(f"{name}: its {kind!r} stage does not decode: {err!r}") from err
    if value.is_floating_point() and value.numel() and not bool(torch.isfinite(value).all()):
        raise NncFormatError(f"{name}: its {kind!r} stage decodes to NaN or infinite values (e.g. codes x scale "
                             "overflows)")
    return value


def decoded_state(nnc: NncModel) -> dict[str, torch.Tensor]:
    """Every tensor of the file as the model computes with it, under its state-dict name."""
    state = {}
    for name, chain in nnc.chains.items():
        value = decode_chain(name, chain, nnc.shapes.get(name))
        if name in nnc.shapes and tuple(value.shape) != tuple(nnc.shapes[name]):
            raise NncFormatError(f"{name}: decodes to shape {list(value.shape)}, the file says {list(nnc.shapes[name])}")
        state[name] = value
    state.update(nnc.tensors)
    return state


MAX_IN_DIM = 1 << 16  # largest input dimension of a zoo model a file may declare
MAX_IN_ELEMENTS = 1 << 24  # elements of one input sample
MAX_CLASSES = 1 << 24


def check_zoo_desc(desc: object, where: str, error: type[ValueError] = NncFormatError) -> tuple[str, tuple[int, ...], int]:
    """(arch, in_shape, num_classes) of a zoo model description read from a file, each in its bounds
    (before anything is built): in_shape 1..4 dimensions in [1, MAX_IN_DIM], at most MAX_IN_ELEMENTS
    elements; num_classes in [1, MAX_CLASSES]."""
    if not isinstance(desc, dict):
        raise error(f"{where}: the model description is a {type(desc).__name__}, expected an object")
    arch, shape, classes = desc.get("arch"), desc.get("in_shape"), desc.get("num_classes")
    if not isinstance(arch, str) or arch not in MODELS:
        raise (UserError if error is UserError or "arch" not in desc else error)(
            f"{where}: the file describes the model as {str(desc)[:200]}, not a zoo architecture; pass "
            "the module to load into (decode_model(nnc, model=YourNet()) / load_model(path, model=...))")
    if not (isinstance(shape, list) and 1 <= len(shape) <= 4 and all(_int_in(d, 1, MAX_IN_DIM) for d in shape)
            and math.prod(shape) <= MAX_IN_ELEMENTS):
        raise error(f"{where}: description incomplete or out of range: in_shape={str(shape)[:100]} must list 1 to 4 integers in [1, {MAX_IN_DIM}] "
                    f"with at most {MAX_IN_ELEMENTS} elements in all")
    if not _int_in(classes, 1, MAX_CLASSES):
        raise error(f"{where}: description incomplete or out of range: num_classes={str(classes)[:100]} must be an integer in [1, {MAX_CLASSES}]")
    return arch, tuple(shape), classes


def _int_in(value: object, lo: int, hi: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi


def zoo_shapes(arch: str, in_shape: tuple[int, ...], num_classes: int) -> dict[str, tuple[int, ...]]:
    """The state-dict shapes the zoo model would have, computed on the meta device (no memory)."""
    with torch.device("meta"):
        model = build_model(arch, in_shape, num_classes)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _zoo_model(nnc: NncModel) -> nn.Module:
    arch, in_shape, num_classes = check_zoo_desc(nnc.model, "model")
    declared = {**{k: tuple(v) for k, v in nnc.shapes.items()}, **{k: tuple(t.shape) for k, t in nnc.tensors.items()}}
    expected = zoo_shapes(arch, in_shape, num_classes)
    if expected != declared:
        diff = sorted(k for k in expected.keys() | declared.keys() if expected.get(k) != declared.get(k))
        raise NncFormatError(f"model: the stored tensors do not fit a {arch} of in_shape {list(in_shape)} and "
                             f"{num_classes} classes ({', '.join(diff[:5])}{' ...' if len(diff) > 5 else ''}); "
                             "nothing was built")
    return build_model(arch, in_shape, num_classes)


def decode_model(nnc: NncModel, model: nn.Module | None = None) -> nn.Module:
    """Load every decoded tensor into `model` (an unparametrized module whose state-dict names are
    the file's, e.g. `fc1.weight`), or into the zoo model the file names; returns it in eval mode."""
    target = _zoo_model(nnc) if model is None else model
    try:
        target.load_state_dict(decoded_state(nnc))
    except RuntimeError as err:
        what = f"a {nnc.model.get('arch')}" if model is None else f"the given {type(model).__name__}"
        error = NncFormatError if model is None else UserError
        raise error(f"the tensors do not fit {what}: {err}") from err
    return target.eval()
