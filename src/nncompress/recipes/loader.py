"""Read a YAML recipe into plain data plus the line of every value, so any later error (schema,
method fields, layer names) can name the recipe line it comes from.

`yaml.SafeLoader` builds only plain types (no Python objects from tags); the node tree it composes
keeps each node's start mark, which `_walk` records per path (("stages", 1, "prune", "sparsity")
-> line 9). Duplicate keys, which YAML loaders silently overwrite, are an error here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..validate import UserError

MAX_RECIPE_BYTES = 1 << 20  # a recipe is a page of YAML, not a data file


@dataclass
class Marked:
    """Plain data read from YAML, and the 1-based line of each path in it."""

    data: Any
    source: str
    lines: dict[tuple, int] = field(default_factory=dict)

    def line(self, path: tuple) -> int | None:
        """The line of `path`, else of its longest recorded prefix (a missing field: its parent's line)."""
        for n in range(len(path), -1, -1):
            if path[:n] in self.lines:
                return self.lines[path[:n]]
        return None

    def where(self, path: tuple) -> str:
        """'recipe.yaml line 9 (stages[1].prune.sparsity)': for error messages."""
        line = self.line(path)
        at = f"{self.source} line {line}" if line is not None else self.source
        return f"{at} ({dotted(path)})" if path else at


def dotted(path: tuple) -> str:
    """("stages", 1, "prune", "sparsity") -> "stages[1].prune.sparsity"."""
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def load_yaml_text(text: str, source: str = "<recipe>") -> Marked:
    """Parse one YAML document (safe types only) and record every value's line."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_RECIPE_BYTES:
        raise UserError(f"{source} is larger than {MAX_RECIPE_BYTES} bytes: not a recipe")
    try:
        loader = yaml.SafeLoader(text)
        try:
            node = loader.get_single_node()
            if node is None:
                raise UserError(f"{source} is empty: a recipe needs at least 'model' and 'stages'")
            marked = Marked(None, source)
            _walk(node, (), marked)
            marked.data = loader.construct_document(node)
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = f" line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"{source}{line}: not valid YAML: {err.problem or err}") from None
    except yaml.YAMLError as err:
        raise UserError(f"{source}: not valid YAML: {err}") from None
    return marked


def load_yaml(path: str | Path) -> Marked:
    """Read and parse a recipe file (a missing file is a UserError naming it)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"recipe {str(path)!r} does not exist (or is not a file)")
    if path.stat().st_size > MAX_RECIPE_BYTES:
        raise UserError(f"{path} is larger than {MAX_RECIPE_BYTES} bytes: not a recipe")
    return load_yaml_text(path.read_text(encoding="utf-8"), str(path))


def _walk(node: yaml.Node, path: tuple, marked: Marked) -> None:
    marked.lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else str(key_node.value)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise UserError(f"{marked.source} line {line}: key {key!r} appears twice in the same mapping "
                                f"(first on line {seen[key]})")
            seen[key] = line
            _walk(value_node, (*path, key), marked)
            marked.lines[(*path, key)] = line  # a field's line is its key's line
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _walk(item, (*path, i), marked)
