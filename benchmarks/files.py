"""What every benchmark starts from: a synthetic AudioSet-layout file and the benchmarked settings."""

from __future__ import annotations

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


def settings(model: Path) -> Any:
    """The benchmarked configuration: the environment's settings with the benchmarked model."""
    from audioset_batch.settings import load_settings

    return load_settings(model_path=model)
