"""Download public dataset files (for online users) into a `--data-dir`, atomically.

Offline, point `data_dir` at a folder that already holds the files: nothing is fetched then.
"""
from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path

from ..fileio import atomic_write_bytes
from .idx import DataFileError


def fetch(filename: str, mirrors: tuple[str, ...], data_dir: Path, download: bool) -> Path:
    """Return `data_dir/filename`, downloading it from the first mirror that answers if allowed."""
    path = Path(data_dir) / filename
    if path.is_file():
        return path
    if not download:
        raise DataFileError(
            f"data file {str(path)!r} does not exist. Pass --download to fetch it from "
            f"{mirrors[0]}, or --data-dir pointing to a folder that holds {filename}")
    errors = []
    for mirror in mirrors:
        url = mirror.rstrip("/") + "/" + filename
        try:
            with urllib.request.urlopen(url, timeout=60) as response:  # noqa: S310 (fixed https mirrors)
                atomic_write_bytes(path, response.read())
            return path
        except (urllib.error.URLError, OSError) as err:
            errors.append(f"{url}: {err}")
    raise DataFileError(f"could not download {filename}: " + "; ".join(errors))
