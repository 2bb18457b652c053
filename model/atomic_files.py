"""Run state written whole or not at all: an interrupted run resumes from the last complete file, never a torn one."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np


def write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def save_npz(path: Path, **arrays: Any) -> None:
    """``np.savez`` to ``path`` (which ends in ``.npz``) through a temporary file beside it."""
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
