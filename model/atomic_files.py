"""Files written whole or not at all: the one way this project replaces a file.

A reader (a resumed run, a worker loading a model, a user's tail of results) sees the old file or the
new one, never a torn one; an interrupted write leaves no temporary file behind.
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np


@functools.cache
def process_umask() -> int:
    """The process umask, read without changing it (``os.umask`` can only be read by setting it)."""
    try:
        for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


@contextmanager
def replacing(path: Path, suffix: str | None = None) -> Iterator[Path]:
    """A temporary path beside ``path`` (ending in ``suffix``, by default ``path``'s own) for the block to
    write; it replaces ``path`` when the block ends without an exception and is removed in every case.

    The file gets the mode any new file would (``mkstemp`` makes 0600; results and models are read by others).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix if suffix is None else suffix
    )
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        tmp.chmod(0o666 & ~process_umask())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_bytes(path: Path, data: bytes) -> None:
    with replacing(path) as tmp:
        tmp.write_bytes(data)


def write_json(path: Path, data: dict[str, Any]) -> None:
    write_bytes(path, (json.dumps(data, indent=2) + "\n").encode("utf-8"))


def save_npz(path: Path, **arrays: Any) -> None:
    """``np.savez`` to ``path`` (which ends in ``.npz``)."""
    with replacing(path, suffix=".npz") as tmp:
        np.savez(tmp, **arrays)
