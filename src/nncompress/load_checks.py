"""What `load_model` (api.py) checks in a saved model file before it builds anything: the types
and bounds of the metadata fields, that a zoo description fits the file (the memory the model would
take, the shapes of the stored tensors) and that every stored float is finite. Each failure is a
UserError naming the field or tensor: a crafted file may neither make the loader allocate far more
than its own size nor load into a model that silently computes garbage.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from .encode.model import check_zoo_desc, zoo_shapes
from .methods import MAX_RECIPE_METHODS, method_from_dict
from .validate import UserError
from .zoo import MODELS

#: a zoo model rebuilt from a file may take at most this many bytes per byte of the file (2-bit codes
#: decode to float32: 16x), plus ZOO_FIXED_BYTES, before anything is built
ZOO_BYTES_PER_FILE_BYTE = 16
ZOO_FIXED_BYTES = 16 << 20  # every zoo architecture at its usual input size is far below this


def check_metadata(meta: dict, path: str | os.PathLike, *, zoo: bool) -> None:
    """Check the types and bounds of a file's metadata fields (UserError naming the field) before
    anything is built: arch / in_shape / num_classes (all of them when the zoo model is rebuilt),
    tied, example, and the recipe (fold_batchnorm, converted, at most MAX_RECIPE_METHODS methods)."""
    where = f"{str(path)!r} metadata"
    arch = meta.get("arch")
    if arch is not None and not isinstance(arch, str):
        raise UserError(f"{where}: field 'arch'={str(arch)[:80]} must be a string")
    if zoo and arch not in MODELS:
        raise not_zoo_error(path, meta)
    if arch in MODELS:
        zoo_description(meta, path)
    elif "in_shape" in meta and not (isinstance(meta["in_shape"], list) and len(meta["in_shape"]) <= 16 and all(
            isinstance(d, int) and not isinstance(d, bool) and 1 <= d <= 1 << 16 for d in meta["in_shape"])):
        raise UserError(f"{where}: field 'in_shape'={str(meta['in_shape'])[:80]} must list positive integers")
    tied = meta.get("tied", {})
    if not (isinstance(tied, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in tied.items())):
        raise UserError(f"{where}: field 'tied' must be an object of tensor name -> tensor name")
    if not isinstance(meta.get("shrunk", False), bool):
        raise UserError(f"{where}: field 'shrunk'={str(meta['shrunk'])[:80]} must be true or false")
    if "example" in meta and not isinstance(meta["example"], dict):
        raise UserError(f"{where}: field 'example' must be an object (a packed batch)")
    if "recipe" in meta:
        _check_recipe(meta["recipe"], where)
        if meta.get("shrunk") and meta["recipe"].get("converted"):
            raise UserError(f"{where}: a shrunk model cannot also be converted (save_model refuses to write one)")


def _check_recipe(recipe: Any, where: str) -> None:
    if not isinstance(recipe, dict):
        raise UserError(f"{where}: field 'recipe' must be an object with 'methods', 'fold_batchnorm', 'converted'")
    for key in ("fold_batchnorm", "converted"):
        if not isinstance(recipe.get(key, False), bool):
            raise UserError(f"{where}: field 'recipe.{key}'={recipe[key]!r} must be true or false")
    methods = recipe.get("methods", [])
    if not isinstance(methods, list) or len(methods) > MAX_RECIPE_METHODS:
        raise UserError(f"{where}: field 'recipe.methods' must be a list of at most {MAX_RECIPE_METHODS} methods")
    for i, spec in enumerate(methods):
        try:
            method_from_dict(spec)
        except UserError as err:
            raise UserError(f"{where}: recipe.methods[{i}]: {err}") from None


def check_zoo_size(meta: dict, path: str | os.PathLike) -> None:
    """Refuse a zoo description whose model would take far more memory than the file could fill."""
    arch, in_shape, num_classes = zoo_description(meta, path)
    shapes = zoo_shapes(arch, in_shape, num_classes)
    need = 4 * sum(math.prod(shape) for shape in shapes.values())
    allowed = ZOO_BYTES_PER_FILE_BYTE * Path(path).stat().st_size + ZOO_FIXED_BYTES
    if need > allowed:
        raise UserError(f"{str(path)!r} metadata: a {arch} of in_shape {list(in_shape)} and {num_classes} classes "
                        f"takes {need} bytes, more than a {Path(path).stat().st_size}-byte file can hold; nothing was built")
    converted = isinstance(meta.get("recipe"), dict) and meta["recipe"].get("converted") is True
    declared = _declared_shapes(path)
    shrunk = meta.get("shrunk") is True
    clashes = [k for k, shape in shapes.items() if not _fits_stored(declared, k, shape, converted, shrunk)]
    if clashes:
        raise UserError(f"{str(path)!r} metadata: a {arch} of in_shape {list(in_shape)} and {num_classes} classes does "
                        f"not fit the stored tensors ({first_few(clashes)}); nothing was built")


def _declared_shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape as the safetensors header declares it (nothing is loaded)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError) as err:
        raise UserError(f"{str(path)!r} is not a valid nncompress safetensors file: {err}") from err


def _fits_stored(declared: dict[str, tuple[int, ...]], key: str, shape: tuple[int, ...], converted: bool,
                 shrunk: bool = False) -> bool:
    """Whether the file's tensor for state key `key` (or its parametrized original) can hold a zoo
    tensor of `shape`; True when the file holds neither. A converted model packs its codes (shapes
    differ by design; the codes may sit in the original or in the chain's buffers), but never in
    fewer elements than one bit per weight needs, so fewer than that are a clash:
    an edited `num_classes` cannot make `load_model` build and calibrate a model the file cannot fill.
    A shrunk model (`shrink_` removed channels) stores tensors of the same rank, no size larger."""
    module, _, name = key.rpartition(".")
    original = f"{module}.parametrizations.{name}.original" if module else f"parametrizations.{name}.original"
    stored = declared.get(key, declared.get(original))
    if shrunk and stored is not None:
        return len(stored) == len(shape) and all(1 <= s <= b for s, b in zip(stored, shape))
    if key in declared:
        return declared[key] == shape
    if original not in declared:
        return True
    if not converted:
        return declared[original] == shape
    prefix = original[: -len("original")]
    stored = sum(math.prod(s) for k, s in declared.items() if k.startswith(prefix))
    return stored >= math.ceil(math.prod(shape) / 8)


def check_finite(state: dict[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Refuse NaN / infinite values in any stored floating-point tensor, naming it (a crafted file
    must not load into a model that silently computes garbage)."""
    for key, tensor in state.items():
        if tensor.is_floating_point() and tensor.numel() and not bool(torch.isfinite(tensor).all()):
            raise UserError(f"{str(path)!r}: tensor {key!r} holds NaN or infinite values")


def not_zoo_error(path: str | os.PathLike, meta: dict) -> UserError:
    """The error for a file that names no zoo model when no model= was given to load into."""
    return UserError(f"{str(path)!r} holds a model that is not from the zoo (arch={str(meta.get('arch'))[:80]!r}): "
                     "pass model= an instance of its class or a zero-argument function building one, e.g. "
                     "load_model(path, model=lambda: MyNet(config))")


def first_few(keys: list[str], n: int = 5) -> str:
    """The first `n` keys, comma-separated, and how many there are in all ("none" when empty)."""
    return (", ".join(keys[:n]) + (f" ... ({len(keys)} in all)" if len(keys) > n else "")) if keys else "none"


def zoo_description(meta: dict, path: str | os.PathLike) -> tuple[str, tuple[int, ...], int]:
    """(arch, in_shape, num_classes) of the zoo model a file names, checked (`encode.model.check_zoo_desc`)."""
    return check_zoo_desc({k: meta.get(k) for k in ("arch", "in_shape", "num_classes")},
                          f"{str(path)!r} metadata", UserError)
