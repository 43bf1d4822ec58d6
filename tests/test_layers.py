"""Imports only go downward (ARCHITECTURE.md): analysis/ never imports methods, L0 nothing above it."""
import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "nncompress"
LEVEL = {"validate": 0, "batches": 0, "bitpack": 0, "fileio": 0, "numerics": 0, "parametrize": 0, "config": 0,
         "registry": 0, "quant.primitives": 0, "quant.granularity": 0, "prune.masks": 0, "encode.sparse": 0,
         "zoo": 0, "train": 1, "analysis": 1, "prune": 2, "quant": 2, "encode": 3, "runtime": 3, "export": 3,
         "methods": 3, "api": 4, "load_checks": 4, "flows": 4, "recipes": 4, "cli": 4, "__init__": 4,
         "hardware": 1, "report": 4, "sweep": 4}


def level_of(module: str) -> int:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in LEVEL:
            return LEVEL[".".join(parts[:n])]
    raise AssertionError(f"no level for {module}")


def imports(path: Path) -> list[str]:
    rel = path.relative_to(SRC).with_suffix("")
    return imports_in(path.read_text(), list(rel.parts[:-1]))


def imports_in(source: str, package: list[str]) -> list[str]:
    """The nncompress modules `source` (a module of `package`) imports, relative to the package root:
    relative imports, `from nncompress.x import y` and `import nncompress.x` alike ("__init__" for
    the package root itself); other packages are left out."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - node.level + 1]
            names = [".".join(base + [node.module])] if node.module else [".".join(base + [a.name]) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and _ours(node.module):
            root = _strip(node.module)
            names = [root] if root != "__init__" else [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            names = [_strip(a.name) for a in node.names if _ours(a.name)]
        else:
            continue
        found += [n for n in names if n]
    return found


def _ours(module: str | None) -> bool:
    return module == "nncompress" or (module or "").startswith("nncompress.")


def _strip(module: str) -> str:
    return module.removeprefix("nncompress").removeprefix(".") or "__init__"


def test_absolute_imports_are_checked_too():
    source = ("import torch\nfrom nncompress.api import load_model\nimport nncompress.flows.prune as fp\n"
              "from nncompress import methods\nimport nncompress\nfrom . import fileio\n"
              "def f():\n    from nncompress.cli import main\n")
    assert imports_in(source, ["quant"]) == ["api", "flows.prune", "methods", "__init__", "quant.fileio", "cli"]
    assert [level_of(m) for m in imports_in(source, ["quant"])] == [4, 4, 3, 4, 2, 4]


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
