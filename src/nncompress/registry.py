"""Method names for YAML and the CLI. Filled by the explicit import list in `methods.py`,
which also turns YAML dictionaries back into methods (`method_from_dict`)."""
from __future__ import annotations

from typing import TypeVar

from .config import Method

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
