"""Writing files whole or not at all, with a full disk reported as `DiskFull` naming the file.

Each writer writes a hidden temporary file beside the target and renames it into place, so a
killed or failed write never leaves a half-written checkpoint, teacher or summary behind.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any, Callable

from pipeline.errors import writing


def _replace(path: Path, write: Callable[[Path], None]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with writing(path):
        write(tmp)
    os.replace(tmp, path)


def save_torch(obj: Any, path: str | os.PathLike) -> None:
    """torch.save, atomically. It serialises into memory first: on a full disk torch.save
    fails with an opaque "unexpected pos" error, where a plain file write says ENOSPC."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    _replace(Path(path), lambda tmp: tmp.write_bytes(buffer.getbuffer()))


def write_json(path: str | os.PathLike, data: Any, default: Callable[[Any], Any] | None = None) -> None:
    """JSON with an indent of 2 and a final newline, atomically."""
    text = json.dumps(data, indent=2, default=default) + "\n"
    _replace(Path(path), lambda tmp: tmp.write_text(text))


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes (what a run records of the weights it started from)."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
