"""Method names for YAML and the CLI. Filled by the explicit import list in `methods.py`."""
from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from .config import Method, Select
from .validate import did_you_mean, unknown_name_error

METHODS: dict[str, type[Method]] = {}
M = TypeVar("M", bound=type[Method])


def register(name: str):
    """Class decorator: make a Method available under `name` (snake_case) for YAML and the CLI."""
    def wrap(cls: M) -> M:
        if name in METHODS and METHODS[name] is not cls:
            raise ValueError(f"method name {name!r} is already registered by {METHODS[name].__name__}")
        cls.name = name
        METHODS[name] = cls
        return cls
    return wrap


def method_from_dict(spec: dict[str, Any]) -> Method:
    """Build a Method from {"method": name, field: value, ...}; unknown names and fields are errors."""
    from . import methods  # noqa: F401  (fills METHODS)

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
