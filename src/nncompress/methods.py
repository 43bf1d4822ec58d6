"""The explicit list of built-in method modules. Importing them registers their names
(no import-time plugin scanning): add one line here when adding a method family.
`method_from_dict` turns a YAML / JSON dictionary back into a Method."""
from __future__ import annotations

import dataclasses
from typing import Any

from .config import Method, Select
from .prune import unstructured  # noqa: F401
from .quant import kmeans, ptq, smooth  # noqa: F401
from .registry import METHODS
from .validate import did_you_mean, unknown_name_error

__all__ = ["METHODS", "method_from_dict"]


def method_from_dict(spec: dict[str, Any]) -> Method:
    """Build a Method from {"method": name, field: value, ...}; unknown names and fields are errors."""
    spec = dict(spec)
    name = spec.pop("method", None)
    if name not in METHODS:
        raise unknown_name_error("method", str(name), METHODS)
    cls = METHODS[name]
    fields = {f.name for f in dataclasses.fields(cls)}
    for key in spec:
        if key not in fields:
            raise ValueError(f"method {name!r} has no field {key!r}.{did_you_mean(key, fields)} "
                             f"Fields: {', '.join(sorted(fields))}")
    if isinstance(spec.get("targets"), dict):
        spec["targets"] = Select(**spec["targets"])
    return cls(**spec)
