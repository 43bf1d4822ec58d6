"""The explicit list of built-in method modules. Importing them registers their names
(no import-time plugin scanning): add one line here when adding a method family.
`method_from_dict` turns a YAML / JSON dictionary back into a Method."""
from __future__ import annotations

import dataclasses
from typing import Any

from .config import Method, Select
from .prune import unstructured  # noqa: F401
from .quant import floating, kmeans, ptq, smooth  # noqa: F401
from .registry import METHODS
from .validate import UserError, did_you_mean, unknown_name_error

__all__ = ["METHODS", "method_from_dict"]


def method_from_dict(spec: dict[str, Any]) -> Method:
    """Build a Method from {"method": name, field: value, ...}; unknown names and fields, and missing
    required fields, are UserErrors naming them."""
    spec = dict(spec)
    name = spec.pop("method", None)
    if name not in METHODS:
        raise unknown_name_error("method", str(name), METHODS)
    cls = METHODS[name]
    _check_keys(f"method {name!r}", spec, dataclasses.fields(cls))
    if isinstance(spec.get("targets"), dict):
        _check_keys("targets", spec["targets"], dataclasses.fields(Select))
        spec["targets"] = Select(**spec["targets"])
    return cls(**spec)


def _check_keys(what: str, spec: dict[str, Any], fields: tuple[dataclasses.Field, ...]) -> None:
    names = {f.name for f in fields}
    for key in spec:
        if key not in names:
            raise UserError(f"{what} has no field {key!r}.{did_you_mean(key, names)} "
                            f"Fields: {', '.join(sorted(names))}")
    missing = [f.name for f in fields if f.name not in spec and f.default is dataclasses.MISSING
               and f.default_factory is dataclasses.MISSING]
    if missing:
        raise UserError(f"{what} needs a value for {', '.join(map(repr, missing))}")
