"""A whole model to and from the `.nnc` in-memory form (`container.NncModel`), generically.

`encode_model` walks every tensor of the model's state: a parametrized one (weight or bias) is
stored as `encode_chain(layer, name)`, the Encoded of each of its transforms, innermost first;
any other tensor as its plain value. Decoding applies `TRANSFORM_KINDS[kind].decode` to each
chain's last stage, which by the transform contract reproduces exactly what the layer computed
with, so a decoded model is bit-exact with the encoded one.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..parametrize import TRANSFORM_KINDS, encode_chain, plain_state
from ..validate import UserError
from ..zoo import MODELS, build_model
from .container import NncFormatError, NncModel


def parametrized_tensors(model: nn.Module) -> dict[str, tuple[nn.Module, str]]:
    """Plain state-dict name (`fc1.weight`) -> (layer, tensor name) of every parametrized tensor."""
    found = {}
    for module_name, module in model.named_modules():
        if parametrize.is_parametrized(module):
            for tensor_name in module.parametrizations.keys():
                found[f"{module_name}.{tensor_name}" if module_name else tensor_name] = (module, tensor_name)
    return found


def encode_model(model: nn.Module, model_desc: dict, meta: dict | None = None) -> NncModel:
    """Every tensor of `model`: transform chains for parametrized ones, plain values otherwise.

    `model_desc`: JSON describing the model, e.g. {"arch": "lenet300", "in_shape": [1, 28, 28],
    "num_classes": 10} for a zoo model (then `decode_model(nnc)` rebuilds it), or anything else
    for your own module (decode with `decode_model(nnc, model=YourNet())`).
    """
    chained = parametrized_tensors(model)
    nnc = NncModel(dict(model_desc), meta=dict(meta or {}))
    for name, value in plain_state(model).items():
        if name in chained:
            nnc.chains[name] = encode_chain(*chained[name])
        else:
            nnc.tensors[name] = value.detach().cpu().clone()
    return nnc


def decode_chain(name: str, chain: list) -> torch.Tensor:
    """What a stored chain decodes to: its last stage through the registered transform class."""
    kind = chain[-1].kind
    if kind not in TRANSFORM_KINDS:
        raise NncFormatError(f"{name}: transform kind {kind!r} is unknown to this nncompress "
                             f"(known: {', '.join(sorted(TRANSFORM_KINDS))}); a newer version wrote it?")
    try:
        return TRANSFORM_KINDS[kind].decode(chain[-1])
    except (KeyError, IndexError, RuntimeError, TypeError, ValueError) as err:
        raise NncFormatError(f"{name}: its {kind!r} stage does not decode: {err!r}") from err


def decoded_state(nnc: NncModel) -> dict[str, torch.Tensor]:
    """Every tensor of the file as the model computes with it, under its state-dict name."""
    state = {}
    for name, chain in nnc.chains.items():
        value = decode_chain(name, chain)
        if name in nnc.shapes and tuple(value.shape) != tuple(nnc.shapes[name]):
            raise NncFormatError(f"{name}: decodes to shape {list(value.shape)}, the file says {list(nnc.shapes[name])}")
        state[name] = value
    state.update(nnc.tensors)
    return state


def _zoo_model(nnc: NncModel) -> nn.Module:
    desc = nnc.model
    if desc.get("arch") not in MODELS:
        raise UserError(f"the file describes the model as {desc!r}, not a zoo architecture; "
                        "pass the module to load into: decode_model(nnc, model=YourNet())")
    try:
        return build_model(desc["arch"], tuple(desc["in_shape"]), int(desc["num_classes"]))
    except (KeyError, TypeError, ValueError) as err:
        raise NncFormatError(f"model description {desc!r} is incomplete: {err}") from err


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
