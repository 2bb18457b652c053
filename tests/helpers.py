"""Builders shared by the tests: synthetic HDF5 files and small model artifacts."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np

from model.labels import ClassLabel

if TYPE_CHECKING:
    from audioset_batch.jobs.job_store import JobStatus, JobStore


def make_labels(n: int, prefix: str = "Class") -> list[ClassLabel]:
    return [ClassLabel(index=i, mid=f"/m/test{i:03d}", name=f"{prefix} {i}") for i in range(n)]


def auto_serves() -> tuple[str, str]:
    """``(precision, runtime)`` that ``auto`` serves an artifact with both compiled forms on this CPU: the
    bfloat16 form in OpenVINO where the CPU has AMX, else the int8 form in LiteRT (:func:`resolve_precision`)."""
    from model.inference import cpu_has_amx
    from model.openvino_forward import openvino_available

    return ("bfloat16", "OpenVINO") if cpu_has_amx() and openvino_available() else ("int8", "LiteRT")


def stack_tag(tag: str = "tiny@0") -> str:
    """The model tag a ``stack`` fixture's worker writes: its compiled form as ``auto`` serves it here."""
    return f"{tag}+{auto_serves()[0]}"


def flip_a_byte(path: Path, at: int = -100) -> None:
    """Corrupt a file the way a bad disk or a tampering hand would: one byte, its size unchanged."""
    blob = bytearray(path.read_bytes())
    blob[at] ^= 0xFF
    path.write_bytes(bytes(blob))


def write_h5(
    path: Path,
    clips: int = 6,
    frames: int = 10,
    classes: int | None = None,
    seed: int = 0,
    video_ids: bool = True,
    dtype: type = np.uint8,
) -> Path:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        if dtype == np.uint8:
            f.create_dataset("x", data=rng.integers(0, 256, size=(clips, frames, 128), dtype=np.uint8))
        else:
            f.create_dataset("x", data=rng.normal(size=(clips, frames, 128)).astype(dtype))
        if video_ids:
            f.create_dataset("video_id_list", data=np.array([f"vid{seed:03d}_{i:04d}".encode() for i in range(clips)]))
            f.create_dataset("start_time_seconds", data=np.arange(clips, dtype=np.float32) * 10)
        if classes:
            y = rng.random((clips, classes)) < 0.3
            y[0, :] = True  # every class has a positive
            y[-1, :] = False  # and a negative
            f.create_dataset("y", data=y)
    return path


def learnable_dataset(clips: int, classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings where each class adds a fixed pattern to random frames: learnable, not trivial."""
    rng = np.random.default_rng(seed)
    patterns = rng.normal(0, 40, size=(classes, 128))
    y = rng.random((clips, classes)) < 0.15
    y[np.arange(clips), rng.integers(0, classes, clips)] = True
    x = rng.normal(128, 20, size=(clips, 10, 128))
    for c in range(classes):
        idx = np.flatnonzero(y[:, c])
        frames = rng.integers(0, 10, size=(len(idx), 4))
        for j, i in enumerate(idx):
            x[i, frames[j]] += patterns[c]
    return np.clip(x, 0, 255).astype(np.uint8), y


def build_artifact(
    path: Path,
    classes: int = 12,
    architecture: str = "decision_level_multi_attention",
    hidden_units: int = 32,
    name: str = "tiny",
    version: str = "0",
    labels: list[ClassLabel] | None = None,
    seed: int = 0,
) -> Path:
    from model.artifact import save_untrained

    return save_untrained(
        path,
        architecture,
        labels or make_labels(classes),
        hidden_units,
        name=name,
        version=version,
        why="tests",
        dropout=0.1,
        seed=seed,
    )


def wait_job(jobs: JobStore, job: str, timeout: float = 120) -> JobStatus:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = jobs.status(job)
        if status.finished:
            return status
        time.sleep(0.2)
    raise TimeoutError(f"job {job} not finished: {jobs.status(job)}")


def write_shared_id_bomb(path: Path, clips: int, id_bytes: int, layout: str = "contiguous") -> Path:
    """A file whose ``video_id_list`` references all name one stored id of ``id_bytes`` bytes.

    h5py writes one heap object per element, so the references of elements 1.. are overwritten on disk with
    element 0's: the file stores the id once, and reading every id decodes it ``clips`` times.
    """
    from audioset_batch.scoring.vlen_lengths import reference_size

    kwargs: dict[str, Any] = {"chunks": (clips,)} if layout == "chunked" else {}
    ids = np.array([b"i" * id_bytes] + [b"a"] * (clips - 1), dtype=object)
    with h5py.File(path, "w") as f:
        f["x"] = np.zeros((clips, 10, 128), dtype=np.uint8)
        f.create_dataset("video_id_list", data=ids, dtype=h5py.string_dtype("ascii"), **kwargs)
    with h5py.File(path, "r") as f:
        ds = f["video_id_list"]
        element = reference_size(f)
        offset = ds.id.get_offset() if layout == "contiguous" else ds.id.get_chunk_info(0).byte_offset
    with path.open("r+b") as fh:
        fh.seek(offset)
        first = fh.read(element)
        fh.seek(offset)
        fh.write(first * clips)
    return path
