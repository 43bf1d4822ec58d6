"""Our plain C kernels (`runtime/_<name>.c`: no Python or torch headers), loaded with ctypes.

setup.py builds each one at install time for the baseline x86-64 ISA (faster paths chosen inside
the C at run time); where the package was installed without a compiler, or before the kernel
existed, `load(name)` compiles it once into a cache folder with the C compiler on PATH. Every build
carries the hash of its source and flags (`nnc_source_hash()`), and a library whose hash is not the
installed source's (a stale build: an edited checkout, a cache from another version) is not loaded,
since changed signatures behind old ctypes declarations would corrupt memory. Every kernel is optional: `status(name)` says which library runs, or why none
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
#: Flags one kernel adds (compile and link): the row kernel's loops run on torch's OpenMP team.
KERNEL_FLAGS = {"_int8_rows": ["-fopenmp"]}
_libraries: dict[str, ctypes.CDLL | None] = {}
_status: dict[str, dict[str, str]] = {}


def source(name: str) -> Path:
    """The C source of kernel `name` (e.g. "_xnor")."""
    return HERE / f"{name}.c"


def flags(name: str) -> list[str]:
    """Kernel `name`'s compile (and link) flags."""
    return COMPILE_FLAGS + KERNEL_FLAGS.get(name, [])


def digest(name: str) -> str:
    """Hash of kernel `name`'s source and compile flags: what its builds must carry."""
    src = source(name)
    text = (src.read_bytes() if src.is_file() else b"missing") + " ".join(flags(name)).encode()
    return hashlib.sha256(text).hexdigest()[:16]


def hash_define(name: str) -> str:
    """The -D value that embeds `digest(name)` in a build (setup.py passes the same)."""
    return f'"{digest(name)}"'


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
        cmd = [compiler, *flags(src.stem), f"-DNNC_SOURCE_HASH={hash_define(src.stem)}", "-shared", "-fPIC", str(src),
               "-o", str(out)]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise OSError(f"{' '.join(cmd)} failed: {done.stderr.strip()[:400]}")
        os.replace(out, target)  # atomic: concurrent processes never load half a file
    return target


def _candidates(name: str) -> list[Path]:
    """The installed build first, then the cache entry of this source and these flags (compiled on
    demand)."""
    built = _built_library(name)
    return [*([built] if built is not None else []), _cache_dir() / f"{name.lstrip('_')}-{digest(name)}.so"]


def _check_hash(library: ctypes.CDLL, name: str) -> None:
    """Refuse a build of another source (nothing to compare with where the source is not installed)."""
    if not source(name).is_file():
        return
    library.nnc_source_hash.restype = ctypes.c_char_p
    found, wanted = library.nnc_source_hash().decode(), digest(name)
    if found != wanted:
        raise OSError(f"stale build (source hash {found}, the installed source's is {wanted})")


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
            _check_hash(library, name)
            declare(library)
        except (OSError, AttributeError, subprocess.SubprocessError) as err:  # AttributeError: a build without a symbol
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
