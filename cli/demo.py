"""A small sample file for ``audioset run --demo``.

With ``AUDIOSET_DATA_DIR`` pointing at the AudioSet release, the sample holds
real clips read from it at run time (nothing is shipped); otherwise it holds
synthetic embeddings, and the labels printed are only illustrative.
"""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np

from model.atomic_files import replacing

DATA_FILE = "bal_train.h5"


def write_sample(path: Path, clips: int = 8, seed: int = 0) -> str:
    """Write an AudioSet-layout file; returns where its clips came from."""
    rng = np.random.default_rng(seed)
    data_dir = os.environ.get("AUDIOSET_DATA_DIR")
    source = data_dir and Path(data_dir) / DATA_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with replacing(path) as tmp, h5py.File(tmp, "w") as out:
        if source and source.is_file():
            with h5py.File(source, "r") as real:
                picks = np.sort(rng.choice(real["x"].shape[0], size=clips, replace=False))
                for name in ("x", "y", "video_id_list", "start_time_seconds"):
                    if name in real:
                        out.create_dataset(name, data=real[name][picks])
            origin = f"{clips} real clips from {source}"
        else:
            out.create_dataset("x", data=rng.integers(0, 256, size=(clips, 10, 128), dtype=np.uint8))
            out.create_dataset("video_id_list", data=np.array([f"demo{i:07d}".encode() for i in range(clips)]))
            out.create_dataset("start_time_seconds", data=np.arange(clips, dtype=np.float32) * 10)
            origin = f"{clips} synthetic clips (set AUDIOSET_DATA_DIR for real AudioSet clips)"
    return origin
