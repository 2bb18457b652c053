"""HDF5's own ways of reaching other files (external data, virtual sources, external links), shut at process
start: a second layer behind the reader's refusals."""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import tempfile
from pathlib import Path

HDF5_PREFIX_VARIABLES = ("HDF5_EXTFILE_PREFIX", "HDF5_VDS_PREFIX", "HDF5_EXT_PREFIX")
_EMPTY_PREFIX = "audioset-hdf5-nothing-"


def pin_external_prefixes() -> Path:
    """Point HDF5's search paths for external data, virtual sources and external links at an
    empty private folder. A second layer behind the reader's refusals: even a path HDF5 resolves
    on its own then finds nothing. Called once at process start by the worker and the CLI."""
    pinned = os.environ.get(HDF5_PREFIX_VARIABLES[0], "")
    if pinned and Path(pinned).name.startswith(_EMPTY_PREFIX) and Path(pinned).is_dir():
        return Path(pinned)  # already pinned in this process (or inherited from the parent)
    empty = Path(tempfile.mkdtemp(prefix=f"{_EMPTY_PREFIX}{os.getpid()}-"))
    atexit.register(_remove_empty, empty)
    _remove_orphans(empty.parent)
    for name in HDF5_PREFIX_VARIABLES:
        os.environ[name] = str(empty)
    return empty


def _remove_empty(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.rmdir()


def _remove_orphans(folder: Path) -> None:
    """Remove the empty folders of processes that died without their exit handlers (kill -9)."""
    for path in folder.glob(f"{_EMPTY_PREFIX}*-*"):
        pid = path.name.removeprefix(_EMPTY_PREFIX).partition("-")[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists() and sys.platform.startswith("linux"):
            _remove_empty(path)  # rmdir: never removes a folder something was put in
