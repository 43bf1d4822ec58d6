"""The explicit list of built-in method modules. Importing them registers their names
(no import-time plugin scanning): add one line here when adding a method family."""
from .prune import unstructured  # noqa: F401
from .quant import ptq  # noqa: F401

__all__ = ["ptq", "unstructured"]
