"""The explicit list of built-in method modules. Importing them registers their names
(no import-time plugin scanning): add one line here when adding a method family.
`method_from_dict` turns a YAML / JSON dictionary back into a Method, checking every field's type
against the dataclass annotations first (recipes come from files: a wrong type is a UserError
naming the field, never a TypeError deep inside a method)."""
from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from typing import Any

from .config import Method, Select, check_pattern
from .prune import group_lasso, nm, slimming, structured, unstructured  # noqa: F401
from .quant import (binary, entropy_penalized, floating, fp8_training, kmeans, lqnet, lsq,  # noqa: F401
                    mixed_precision, pact, ptq, qat, smooth, soft_sharing, ternary)
from .registry import METHODS
from .validate import UserError, did_you_mean, unknown_name_error

__all__ = ["METHODS", "MAX_RECIPE_METHODS", "method_from_dict"]

MAX_RECIPE_METHODS = 64  # methods one saved recipe may list
MAX_FIELD_ITEMS = 10_000  # entries of one list / dict field (per-layer overrides, patterns)
MAX_INT = 2**31 - 1  # magnitude of an integer field (bits, seeds, group sizes: each method bounds its own)
MAX_FLOAT = 1e30  # magnitude of a float field (fractions, qualities, alphas)


def method_from_dict(spec: dict[str, Any]) -> Method:
    """Build a Method from {"method": name, field: value, ...}; unknown names and fields, missing
    required fields and values of the wrong type are UserErrors naming them."""
    if not isinstance(spec, dict):
        raise UserError(f"a method spec must be an object {{'method': name, ...}}, got {type(spec).__name__}")
    spec = dict(spec)
    name = spec.pop("method", None)
    if not isinstance(name, str) or name not in METHODS:
        raise unknown_name_error("method", str(name)[:80], METHODS)
    cls = METHODS[name]
    _check_keys(f"method {name!r}", spec, dataclasses.fields(cls))
    hints = _hints(cls)
    for key, value in spec.items():
        if key != "targets":
            _check_type(f"method {name!r} field {key!r}", value, hints[key])
            if hints[key] is float:
                spec[key] = float(value)  # a JSON integer such as 10**29 would overflow torch's int64
            if isinstance(value, dict):
                for pattern in value:
                    check_pattern(pattern, f"method {name!r} field {key!r} key")
    if "targets" in spec:
        spec["targets"] = _select(name, spec["targets"])
    try:
        return cls(**spec)
    except (TypeError, AttributeError) as err:  # a value the type check let through, caught here
        raise UserError(f"method {name!r}: {err}") from None


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _select(method: str, targets: Any) -> Select:
    if isinstance(targets, Select):
        return targets
    if not isinstance(targets, dict):
        raise UserError(f"method {method!r} field 'targets'={str(targets)[:80]!r} must be an object "
                        "{'types': [...], 'include': [...], 'exclude': [...]}")
    _check_keys("targets", targets, dataclasses.fields(Select))
    for key, value in targets.items():  # one string stands for a one-item list
        _check_type(f"method {method!r} targets.{key}", value, str | tuple[str, ...])
    return Select(**targets)


def _check_type(field: str, value: Any, expected: Any) -> None:
    """UserError unless `value` (from JSON / YAML) fits the annotation `expected`."""
    if not _fits(value, expected):
        raise UserError(f"{field}={str(value)[:80]} has the wrong type: expected {_type_name(expected)}")


def _fits(value: Any, expected: Any) -> bool:
    origin, args = typing.get_origin(expected), typing.get_args(expected)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if expected is type(None):
        return value is None
    if expected is bool:
        return isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool) and abs(value) <= MAX_INT
    if expected is float:
        return (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
                and abs(value) <= MAX_FLOAT)
    if expected is str:
        return isinstance(value, str)
    if origin is dict:
        return (isinstance(value, dict) and len(value) <= MAX_FIELD_ITEMS
                and all(_fits(k, args[0]) and _fits(v, args[1]) for k, v in value.items()))
    if origin in (tuple, list):
        return (isinstance(value, (list, tuple)) and len(value) <= MAX_FIELD_ITEMS
                and all(_fits(v, args[0]) for v in value))
    return True  # a type the recipe format does not constrain further (the method checks it)


def _type_name(expected: Any) -> str:
    if expected in (int, float):
        return f"{expected.__name__} of magnitude <= {MAX_INT if expected is int else MAX_FLOAT:g}"
    return getattr(expected, "__name__", None) if not typing.get_args(expected) else str(expected).replace("typing.", "")


def _check_keys(what: str, spec: dict[str, Any], fields: tuple[dataclasses.Field, ...]) -> None:
    names = {f.name for f in fields}
    for key in spec:
        if key not in names:
            raise UserError(f"{what} has no field {str(key)[:80]!r}.{did_you_mean(str(key), names)} "
                            f"Fields: {', '.join(sorted(names))}")
    missing = [f.name for f in fields if f.name not in spec and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise UserError(f"{what} needs a value for {', '.join(map(repr, missing))}")
