"""Imports only go downward (ARCHITECTURE.md): analysis/ never imports methods, L0 nothing above it."""
import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "nncompress"
LEVEL = {"validate": 0, "fileio": 0, "numerics": 0, "parametrize": 0, "config": 0, "registry": 0,
         "quant.primitives": 0, "quant.granularity": 0, "prune.masks": 0, "encode.sparse": 0,
         "zoo": 0, "train": 1, "analysis": 1, "prune": 2, "quant": 2, "encode": 3, "runtime": 3,
         "methods": 3, "api": 4, "flows": 4, "cli": 4, "__init__": 4}


def level_of(module: str) -> int:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in LEVEL:
            return LEVEL[".".join(parts[:n])]
    raise AssertionError(f"no level for {module}")


def imports(path: Path) -> list[str]:
    rel = path.relative_to(SRC).with_suffix("")
    package = list(rel.parts[:-1])
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - node.level + 1]
            target = ".".join(base + ([node.module] if node.module else []))
            names = [target] if node.module else [".".join(base + [a.name]) for a in node.names]
            found += [n for n in names if n]
    return found


def test_imports_only_go_downward():
    bad = []
    for path in SRC.rglob("*.py"):
        me = ".".join(path.relative_to(SRC).with_suffix("").parts)
        if me.endswith("__init__"):
            continue
        for target in imports(path):
            if level_of(target) > level_of(me):
                bad.append(f"{me} (L{level_of(me)}) imports {target} (L{level_of(target)})")
    assert not bad, "\n".join(bad)
