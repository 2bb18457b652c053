"""What every benchmark starts from: a synthetic AudioSet-layout file and the benchmarked settings."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import h5py
import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def write_file(path: Path, clips: int, seed: int = 0, classes: int = 0) -> Path:
    """A synthetic AudioSet-layout file, written in chunks so the writer's memory stays flat; with ``classes``,
    labels ``y`` too (about 2 per clip, as in AudioSet), so scoring it computes the summary's metrics."""
    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as f:
        x = f.create_dataset("x", shape=(clips, 10, 128), dtype=np.uint8, chunks=(min(clips, 4096), 10, 128))
        y = (
            f.create_dataset("y", shape=(clips, classes), dtype=bool, chunks=(min(clips, 4096), classes))
            if classes
            else None
        )
        for start in range(0, clips, 65536):
            stop = min(clips, start + 65536)
            x[start:stop] = rng.integers(0, 256, size=(stop - start, 10, 128), dtype=np.uint8)
            if y is not None:
                y[start:stop] = rng.random((stop - start, classes)) < 2 / classes
        f["video_id_list"] = np.array([f"v{i:010d}".encode() for i in range(clips)])
        f["start_time_seconds"] = np.zeros(clips, dtype=np.float32)
    return path


def audioset_data(needs: str) -> Path:
    """The AudioSet release folder (``AUDIOSET_DATA_DIR``, else ``../shared/data/audioset``) holding ``needs``; a
    benchmark without it stops with one line saying what to set."""
    data = Path(os.environ.get("AUDIOSET_DATA_DIR", ROOT.parent / "shared" / "data" / "audioset"))
    if not (data / needs).is_file():
        sys.exit(f"error: no {needs} in {data}; set AUDIOSET_DATA_DIR to the AudioSet release")
    return data


def settings(model: Path) -> Any:
    """The benchmarked configuration: the environment's settings with the benchmarked model."""
    from audioset_batch.settings import load_settings

    return load_settings(model_path=model)
