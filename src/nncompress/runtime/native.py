"""Our plain C kernels (`runtime/_<name>.c`: no Python or torch headers), loaded with ctypes.

setup.py builds each one at install time for the baseline x86-64 ISA (faster paths chosen inside
the C at run time); where the package was installed without a compiler, or before the kernel
existed, `load(name)` compiles it once into a cache folder (keyed by the source's hash) with the C
compiler on PATH. Every kernel is optional: `status(name)` says which library runs, or why none
does, and the pure-torch path stays available. One loader for all kernels: `_xnor` (XNOR-Net's
popcount GEMM) and `_int8_rows` (per-token int8 quantization around torch's int8 GEMM).
"""
from __future__ import annotations

import ctypes
import hashlib
import importlib.machinery
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Callable

HERE = Path(__file__).parent
COMPILE_FLAGS = ["-O3", "-std=gnu11", "-ffp-contract=off", "-pthread"]  # no FMA contraction: same floats on every ISA
_libraries: dict[str, ctypes.CDLL | None] = {}
_status: dict[str, dict[str, str]] = {}


def source(name: str) -> Path:
    """The C source of kernel `name` (e.g. "_xnor")."""
    return HERE / f"{name}.c"


def _cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "nncompress"


def _built_library(name: str) -> Path | None:
    """The library setup.py built next to this module, if any."""
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = HERE / (name + suffix)
        if path.is_file():
            return path
    return None


def _compile(src: Path, target: Path) -> Path:
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if compiler is None:
        raise OSError("no C compiler on PATH (cc, gcc or clang)")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        out = Path(tmp) / target.name
        cmd = [compiler, *COMPILE_FLAGS, "-shared", "-fPIC", str(src), "-o", str(out)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise OSError(f"{' '.join(cmd)} failed: {done.stderr.strip()[:400]}")
        os.replace(out, target)  # atomic: concurrent processes never load half a file
    return target


def _candidates(name: str) -> list[Path]:
    """The installed build first (unless the source changed after it: an editable install), then the
    per-source cache entry (compiled on demand)."""
    built = _built_library(name)
    src = source(name)
    if built is not None and src.is_file() and src.stat().st_mtime > built.stat().st_mtime:
        built = None
    digest = hashlib.sha256(src.read_bytes()).hexdigest()[:16] if src.is_file() else "missing"
    return [*([built] if built is not None else []), _cache_dir() / f"{name.lstrip('_')}-{digest}.so"]


def load(name: str, declare: Callable[[ctypes.CDLL], None]) -> ctypes.CDLL | None:
    """Kernel `name`'s library with its signatures declared, or None (reason in `status(name)`)."""
    if name in _libraries:
        return _libraries[name]
    errors = []
    library = None
    for path in _candidates(name):
        try:
            if not path.is_file():
                if not source(name).is_file():
                    raise OSError(f"the kernel source {source(name)} is not installed")
                _compile(source(name), path)
            library = ctypes.CDLL(str(path))
            declare(library)
        except (OSError, AttributeError, subprocess.SubprocessError) as err:  # AttributeError: a stale build
            errors.append(f"{path.name}: {err}")
            library = None
            continue
        _status[name] = {"library": str(path)}
        break
    else:
        _status[name] = {"reason": "; ".join(errors) or "not built"}
    _libraries[name] = library
    return library


def status(name: str) -> dict[str, str]:
    """{"library": path} when kernel `name` loaded, else {"reason": why not} ({} before any load)."""
    return dict(_status.get(name, {}))


def pointer(tensor) -> ctypes.c_void_p:
    """A tensor's data pointer for a ctypes call (the caller keeps the tensor alive and contiguous)."""
    return ctypes.c_void_p(tensor.data_ptr())
