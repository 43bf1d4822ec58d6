"""Safe file I/O: atomic writes (temp file + fsync + rename + directory fsync, so a crash never
leaves a half file; modes follow the umask; a killed writer's stale temp files are cleaned up),
model weights as safetensors with a JSON metadata header (no pickle anywhere), and JSON parsing
bounded in size, item count and nesting depth for untrusted headers."""
from __future__ import annotations

import json
import os
import re
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .validate import UserError

#: a temp file of ours older than this is a killed write's leftover, removed by the next write there
STALE_TMP_SECONDS = 3600
MAX_JSON_ITEMS = 4_000_000  # values (containers, numbers, strings) an untrusted JSON header may hold
MAX_JSON_DEPTH = 64  # nesting of objects / lists in an untrusted JSON header
MAX_METADATA_BYTES = 64 << 20  # nncompress metadata JSON in a safetensors header


def _umask() -> int:
    try:  # Linux: read it without changing it (os.umask is process-wide, not thread safe)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _clean_stale_temps(folder: Path, name: str) -> None:
    """Remove `.NAME.XXXXXXXX.tmp` files (our naming) older than STALE_TMP_SECONDS."""
    pattern = re.compile(rf"\.{re.escape(name)}\.[A-Za-z0-9_]{{6,}}\.tmp")
    cutoff = time.time() - STALE_TMP_SECONDS
    for candidate in folder.glob(f".{glob_escape(name)}.*.tmp"):
        try:
            if pattern.fullmatch(candidate.name) and candidate.is_file() and candidate.stat().st_mtime < cutoff:
                candidate.unlink()
        except OSError:
            pass  # another writer removed it, or we may not: not our business


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


def _fsync_path(path: str | Path, directory: bool = False) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    except OSError:
        return  # e.g. directories cannot be opened on some platforms
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call `write(tmp_path)`, fsync it, give it the umask's mode, rename it onto `path` (atomic on
    POSIX) and fsync the folder.

    The temp file lives in the destination folder so the rename never crosses file systems;
    on any error it is removed and the old `path` (if any) is left untouched. Temp files of this
    naming older than STALE_TMP_SECONDS (a killed writer's) are removed first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _clean_stale_temps(path.parent, path.name)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        _fsync_path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_path(path.parent, directory=True)
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically."""
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def write_json(path: str | os.PathLike, obj: object) -> Path:
    """Write `obj` as indented JSON, atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def loads_bounded(text: str | bytes, what: str, error: type[ValueError] = UserError) -> Any:
    """Parse untrusted JSON: at most MAX_JSON_ITEMS values and MAX_JSON_DEPTH levels of nesting,
    no NaN / Infinity; any violation (or invalid JSON) raises `error` naming `what`.

    The item count is bounded before parsing (commas, brackets and braces bound the number of values,
    so a 70 KB zlib header of millions of empty objects is refused without building them)."""
    raw = text.encode("utf-8", "surrogatepass") if isinstance(text, str) else text
    items = raw.count(b",") + raw.count(b"[") + raw.count(b"{")
    if items > MAX_JSON_ITEMS:
        raise error(f"{what}: about {items} JSON values, more than the limit {MAX_JSON_ITEMS}")
    try:
        value = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as err:  # bad UTF-8 / JSON, a 5000-digit number, deep nesting
        raise error(f"{what} is not JSON: {str(err)[:200]}") from None
    _check_depth(value, what, error)
    return value


def _check_depth(value: Any, what: str, error: type[ValueError]) -> None:
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, (dict, list)):
            if depth > MAX_JSON_DEPTH:
                raise error(f"{what}: JSON nested deeper than {MAX_JSON_DEPTH} levels")
            stack.extend((child, depth + 1) for child in (node.values() if isinstance(node, dict) else node))


def save_weights(path: str | os.PathLike, state: dict[str, torch.Tensor], meta: dict) -> Path:
    """Save tensors as safetensors with `meta` (JSON-able) stored in the header under 'nncompress'."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    header = {"nncompress": json.dumps(meta)}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=header))


def _nnc_hint(path: str | os.PathLike) -> str:
    """A pointer to the .nnc reader when `path` starts with the .nnc magic bytes, else ''."""
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError:
        return ""
    return ("; it is a .nnc file: read it with nc.read_nnc(path) and nc.decode_model(nnc, model=...)"
            if magic == b"NNC\x01" else "")


def read_metadata(path: str | os.PathLike) -> dict:
    """The nncompress metadata object of a safetensors file (bounded JSON, an object), without
    loading any tensor; a bad file raises UserError naming it and the field."""
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get("nncompress", "{}")
    except (SafetensorError, OSError) as err:
        hint = _nnc_hint(path)
        raise UserError(f"{str(path)!r} is not a valid nncompress safetensors file: {err}{hint}") from err
    if len(raw) > MAX_METADATA_BYTES:
        raise UserError(f"{str(path)!r}: metadata 'nncompress' is {len(raw)} bytes, more than {MAX_METADATA_BYTES}")
    meta = loads_bounded(raw, f"{str(path)!r} metadata 'nncompress' (not a valid nncompress safetensors file)")
    if not isinstance(meta, dict):
        raise UserError(f"{str(path)!r}: metadata 'nncompress' is a {type(meta).__name__}, expected a JSON object")
    return meta


def load_weights(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """Load tensors and metadata written by `save_weights`; a bad file raises ValueError naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {str(path)!r} does not exist")
    meta = read_metadata(path)
    try:
        return load_file(str(path)), meta
    except (SafetensorError, OSError) as err:
        raise UserError(f"{str(path)!r} is not a valid nncompress safetensors file: {err}") from err
