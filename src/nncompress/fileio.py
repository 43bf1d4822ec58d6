"""Safe file I/O: atomic writes (temp file + rename, so a crash never leaves a half file) and
model weights as safetensors with a JSON metadata header (no pickle anywhere)."""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .validate import UserError


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> Path:
    """Call `write(tmp_path)` then rename tmp_path onto `path` (atomic on POSIX).

    The temp file lives in the destination folder so the rename never crosses file systems;
    on any error it is removed and the old `path` (if any) is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
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


def save_weights(path: str | os.PathLike, state: dict[str, torch.Tensor], meta: dict) -> Path:
    """Save tensors as safetensors with `meta` (JSON-able) stored in the header under 'nncompress'."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    header = {"nncompress": json.dumps(meta)}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=header))


def load_weights(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """Load tensors and metadata written by `save_weights`; a bad file raises ValueError naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {str(path)!r} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get("nncompress", "{}")
        return load_file(str(path)), json.loads(raw)
    except (SafetensorError, json.JSONDecodeError, OSError) as err:
        raise UserError(f"{str(path)!r} is not a valid nncompress safetensors file: {err}") from err
