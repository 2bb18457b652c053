"""Validate an AudioSet-layout HDF5 file, then read it in chunks.

The layout (the seed's): ``x`` N x T x 128 (uint8, or float); optional
``video_id_list`` (N), ``start_time_seconds`` (N) and ``y`` (N x C).
Validation happens before any scoring, so a bad file fails fast with an
error naming the dataset; reading is chunked, so memory stays flat.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import NoReturn

import h5py
import numpy as np

from audioset_batch.errors import (
    CorruptFileError,
    EmptyDatasetError,
    EmptyFileError,
    ExternalLinkError,
    ExternalStorageError,
    ForeignDataError,
    FrameCountError,
    InputFileError,
    LayoutError,
    LimitExceededError,
    MissingDatasetError,
    NonFiniteError,
    NotHDF5Error,
    OversizeFieldError,
    SoftLinkError,
    SparseDatasetError,
    TruncatedFileError,
    VirtualDatasetError,
)
from audioset_batch.scoring.embedding_values import check_values, declared_seconds_per_frame
from audioset_batch.scoring.hdf5_isolation import HDF5_PREFIX_VARIABLES, pin_external_prefixes
from audioset_batch.scoring.vlen_lengths import vlen_lengths

EMBEDDING_WIDTH = 128
__all__ = [
    "HDF5_PREFIX_VARIABLES",
    "Chunk",
    "CorruptFileError",
    "EmbeddingFile",
    "EmptyDatasetError",
    "EmptyFileError",
    "ExternalLinkError",
    "ExternalStorageError",
    "ForeignDataError",
    "FrameCountError",
    "LayoutError",
    "Limits",
    "MissingDatasetError",
    "NonFiniteError",
    "NotHDF5Error",
    "OversizeFieldError",
    "SoftLinkError",
    "SparseDatasetError",
    "TruncatedFileError",
    "VirtualDatasetError",
    "pin_external_prefixes",
]


@dataclass(frozen=True, slots=True)
class Chunk:
    """Consecutive rows for the model: clips, or (for recordings) windows of clips, with what each row carries."""

    start: int  # the first row's number in the file (clip, or window counted over the whole file)
    x: np.ndarray
    video_ids: list[str | None] | None
    start_times: np.ndarray | None
    y: np.ndarray | None
    clip_index: np.ndarray | None = None  # windows only: the clip each row was cut from
    frame_starts: np.ndarray | None = None  # windows only: the row's first frame within its clip


@dataclass(frozen=True, slots=True)
class Limits:
    max_clips: int = 10_000_000
    max_chunk_bytes: int = 256 * 1024**2
    max_read_bytes: int = 64 * 1024**2  # one read across every dataset, so memory follows what is stored
    max_id_bytes: int = 1024
    max_classes: int = 100_000
    max_abs_value: float = 1e4  # float embeddings are about [-2, 2]; beyond this float32 scores overflow
    max_frames: int = 10_000_000  # frames in one clip or recording (about 110 days at 0.96 s)


# Declared bytes over stored bytes beyond which a dataset is refused. gzip tops out near 1,032:1, so any
# dataset whose chunks were really written passes; one whose chunks were never written stores ~0 bytes.
MAX_DECLARED_OVER_STORED = 2048
SPARSE_FLOOR_BYTES = 1024**2


def _classify_open_error(path: Path, exc: OSError) -> InputFileError:
    size = path.stat().st_size if path.exists() else 0
    text = str(exc)
    if size == 0:
        return EmptyFileError("file is empty (0 bytes)")
    if "signature" in text.lower():
        return NotHDF5Error(f"not an HDF5 file ({size} bytes, no HDF5 signature)")
    if "truncated" in text.lower() or "eof" in text.lower():
        return TruncatedFileError(f"HDF5 file is truncated ({size} bytes): {text}")
    return CorruptFileError(f"cannot open HDF5 file: {text}")


def _decode_id(value: object) -> str | None:
    text = value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)
    return text or None


class EmbeddingFile:
    """An open, validated embedding file. Use as a context manager."""

    def __init__(
        self, path: str | Path, limits: Limits | None = None, frames: int | None = None, windows: bool = False
    ) -> None:
        """``frames``: the model's frames per clip. With ``windows``, clips of any other length (and a rank-2
        ``x`` of T x 128, one recording) are accepted and read as windows (:mod:`window_reader`)."""
        self.path = Path(path)
        self.limits = limits or Limits()
        self.expected_frames = frames
        self.accept_windows = windows
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as exc:
            raise _classify_open_error(self.path, exc) from None
        try:
            self._validate()
        except BaseException:
            self._file.close()
            raise

    def __enter__(self) -> EmbeddingFile:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    def _dataset(self, name: str, required: bool) -> h5py.Dataset | None:
        link = self._file.get(name, getlink=True)
        if link is None:
            if required:
                present = sorted(self._file.keys())
                keras = {"layers", "model_weights"} & set(present)  # a training checkpoint under a folder scored
                raise MissingDatasetError(
                    f"dataset '{name}' is missing (datasets present: {present})"
                    + ("; this is a Keras weights file, not embeddings" if keras else "")
                )
            return None
        if isinstance(link, h5py.ExternalLink):
            raise ExternalLinkError(
                f"'{name}' is an external link to '{link.path}' in another file ({link.filename!r}); "
                "embeddings must be stored in the file itself"
            )
        if isinstance(link, h5py.SoftLink):
            raise SoftLinkError(f"'{name}' is a soft link to '{link.path}'; store the dataset itself under '{name}'")
        if not isinstance(link, h5py.HardLink):
            raise LayoutError(f"'{name}' is a {type(link).__name__}, expected a dataset")
        item = self._file.get(name)
        if not isinstance(item, h5py.Dataset):
            raise LayoutError(f"'{name}' is a {type(item).__name__}, expected a dataset")
        self._check_local(name, item)
        return item

    def _check_local(self, name: str, ds: h5py.Dataset) -> None:
        """Refuse data stored outside the file."""
        if ds.is_virtual:
            raise VirtualDatasetError(
                f"dataset '{name}' is an HDF5 virtual dataset (it maps other files); store the data itself"
            )
        if ds.external:
            raise ExternalStorageError(
                f"dataset '{name}' uses HDF5 external storage ({len(ds.external)} file(s) outside this one); "
                "store the data itself"
            )

    def _check_chunking(self, name: str, ds: h5py.Dataset) -> None:
        """Refuse compression bombs, then datasets that store far less than they declare."""
        if ds.chunks is not None:
            chunk_bytes = math.prod(ds.chunks) * ds.dtype.itemsize
            if chunk_bytes > self.limits.max_chunk_bytes:
                raise LimitExceededError(
                    f"dataset '{name}' has HDF5 chunks of {chunk_bytes} bytes, over the limit "
                    f"AUDIOSET_MAX_CHUNK_BYTES={self.limits.max_chunk_bytes} (possible compression bomb)"
                )
        if ds.dtype.hasobject:
            return  # variable-length data lives in the file's heap; its size is the file's
        declared = math.prod(ds.shape) * ds.dtype.itemsize
        stored = ds.id.get_storage_size()
        if declared > SPARSE_FLOOR_BYTES and declared > stored * MAX_DECLARED_OVER_STORED:
            raise SparseDatasetError(
                f"dataset '{name}' declares {declared} bytes (shape {ds.shape}) but stores only {stored}: "
                "its chunks were never written"
            )

    def _validate(self) -> None:
        x = self._dataset("x", required=True)
        assert x is not None
        self.recording = x.ndim == 2 and self.accept_windows  # T x 128: one recording
        if x.ndim != 3 and not self.recording:
            expected = "3: clips x frames x 128" + (
                ", or 2: frames x 128 (one recording)" if self.accept_windows else ""
            )
            raise LayoutError(f"dataset 'x' has rank {x.ndim} (shape {x.shape}); expected {expected}")
        clips, frames, width = (1, *x.shape) if self.recording else x.shape
        if width != EMBEDDING_WIDTH:
            raise LayoutError(f"dataset 'x' has width {width} (shape {x.shape}); expected {EMBEDDING_WIDTH}")
        if clips == 0 or frames == 0:
            raise EmptyDatasetError(f"dataset 'x' holds no {'frames' if self.recording else 'clips'} (shape {x.shape})")
        self.windowed = self.recording or (self.expected_frames is not None and frames != self.expected_frames)
        if self.windowed and not self.accept_windows:
            raise FrameCountError(
                f"dataset 'x' has {frames} frames per clip (shape {x.shape}); the model takes "
                f"{self.expected_frames} (10 one-second VGGish embeddings per clip, zero-padded when shorter)"
            )
        if frames > self.limits.max_frames:
            raise LimitExceededError(
                f"dataset 'x' has {frames} frames per clip, over the limit AUDIOSET_MAX_FRAMES={self.limits.max_frames}"
            )
        if not (x.dtype == np.uint8 or np.issubdtype(x.dtype, np.floating)):
            raise LayoutError(f"dataset 'x' has dtype {x.dtype}; expected uint8 or float")
        if clips > self.limits.max_clips:
            raise LimitExceededError(
                f"dataset 'x' has {clips} clips, over the limit AUDIOSET_MAX_CLIPS={self.limits.max_clips}"
            )
        self._check_chunking("x", x)
        declared = clips * frames * width * x.dtype.itemsize
        size = self.path.stat().st_size
        if x.compression is None and x.chunks is None and declared > size:
            raise TruncatedFileError(
                f"dataset 'x' declares {clips} clips ({declared} bytes) but the file holds only {size} bytes"
            )
        self.x = x
        self.clips, self.frames = int(clips), int(frames)
        self.seconds_per_frame = declared_seconds_per_frame(self.x.attrs, self._file.attrs)

        self.video_ids = self._dataset("video_id_list", required=False)
        if self.video_ids is not None:
            if self.video_ids.dtype.kind not in {"S", "U", "O"}:
                raise LayoutError(f"dataset 'video_id_list' has dtype {self.video_ids.dtype}; expected strings")
            if self.video_ids.dtype.itemsize > self.limits.max_id_bytes and self.video_ids.dtype.kind != "O":
                raise OversizeFieldError(
                    f"dataset 'video_id_list' holds {self.video_ids.dtype.itemsize}-byte ids, over the "
                    f"{self.limits.max_id_bytes}-byte limit for a video id"
                )
            self._check_vector("video_id_list", self.video_ids)
        self.start_times = self._dataset("start_time_seconds", required=False)
        if self.start_times is not None:
            self._check_vector("start_time_seconds", self.start_times)
            if not np.issubdtype(self.start_times.dtype, np.number):
                raise LayoutError(f"dataset 'start_time_seconds' has dtype {self.start_times.dtype}; expected numbers")
        self.y = self._dataset("y", required=False)
        if self.y is not None:
            if self.y.ndim != 2 or self.y.shape[0] != clips:
                raise LayoutError(f"dataset 'y' has shape {self.y.shape}; expected ({clips}, classes)")
            if not (self.y.dtype == np.bool_ or np.issubdtype(self.y.dtype, np.number)):
                raise LayoutError(f"dataset 'y' has dtype {self.y.dtype}; expected bool or numbers")
            if self.y.shape[1] > self.limits.max_classes:
                raise OversizeFieldError(
                    f"dataset 'y' has {self.y.shape[1]} classes, over the limit of {self.limits.max_classes}"
                )
            self._check_chunking("y", self.y)

    def _check_vector(self, name: str, ds: h5py.Dataset) -> None:
        if ds.ndim != 1 or ds.shape[0] != self.clips:
            raise LayoutError(f"dataset '{name}' has shape {ds.shape}; expected ({self.clips},), one entry per clip")
        self._check_chunking(name, ds)

    @property
    def classes(self) -> int | None:
        return int(self.y.shape[1]) if self.y is not None else None

    def skip_labels(self) -> None:
        """Do not read ``y`` (no metrics wanted): its bytes then cost nothing."""
        self.y = None

    def clip_bytes(self) -> int:
        """Bytes one clip costs in memory across every dataset read."""
        size = self.frames * EMBEDDING_WIDTH * int(self.x.dtype.itemsize)
        if self.video_ids is not None:  # a variable-length id costs up to its limit, not its 8-byte reference
            vlen = self.video_ids.dtype.kind == "O"
            size += (self.limits.max_id_bytes if vlen else int(self.video_ids.dtype.itemsize)) + 64
        if self.start_times is not None:
            size += 8
        if self.y is not None:
            size += int(self.y.shape[1]) * int(self.y.dtype.itemsize)
        return size

    def chunks(self, size: int) -> Iterator[Chunk]:
        """Yield consecutive clips in file order, at most ``size`` at a time and at most
        ``Limits.max_read_bytes`` per read across every dataset."""
        size = max(1, min(size, self.limits.max_read_bytes // self.clip_bytes()))
        for start in range(0, self.clips, size):
            stop = min(start + size, self.clips)
            try:
                x = self.x[start:stop]
                ids = self.read_ids(start, stop) if self.video_ids is not None else None
                times = (
                    np.asarray(self.start_times[start:stop], dtype=np.float64) if self.start_times is not None else None
                )
                y = np.asarray(self.y[start:stop]) if self.y is not None else None
            except OSError as exc:
                raise CorruptFileError(f"cannot read clips {start}..{stop - 1}: {exc}") from None
            check_values(x, self.limits.max_abs_value, start)
            yield Chunk(start=start, x=x, video_ids=ids, start_times=times, y=y)

    def labels_of(self, clip: int) -> np.ndarray | None:
        """One clip's labels (``y`` row), or None when the file has none or they are skipped."""
        if self.y is None:
            return None
        try:
            return np.asarray(self.y[clip])
        except OSError as exc:
            raise CorruptFileError(f"cannot read the labels of clip {clip}: {exc}") from None

    def read_ids(self, start: int, stop: int) -> list[str | None]:
        """Video ids of clips ``start..stop-1``, never decoding more than the id limit allows per clip.

        Fixed-length ids were checked against the limit by their width. Variable-length ids are checked by their
        stored lengths before any is decoded; where those cannot be read, in slices small enough that even ids
        as long as the whole file stay within the read budget.
        """
        ds = self.video_ids
        assert ds is not None
        if ds.dtype.kind != "O":
            return [_decode_id(v) for v in ds[start:stop]]
        lengths = vlen_lengths(ds, str(self.path), start, stop)
        if lengths is not None:
            over = np.flatnonzero(lengths > self.limits.max_id_bytes)
            if over.size:
                self._oversize_id(start + int(over[0]), int(lengths[over[0]]))
            return [_decode_id(v) for v in ds[start:stop]]
        step = max(1, self.limits.max_read_bytes // max(self.path.stat().st_size, 1))
        ids: list[str | None] = []
        for first in range(start, stop, step):
            for offset, value in enumerate(ds[first : min(first + step, stop)]):
                if len(value) > self.limits.max_id_bytes:
                    self._oversize_id(first + offset, len(value))
                ids.append(_decode_id(value))
        return ids

    def _oversize_id(self, clip: int, size: int) -> NoReturn:
        raise OversizeFieldError(
            f"dataset 'video_id_list' holds a {size}-byte id at clip {clip}, over the "
            f"{self.limits.max_id_bytes}-byte limit for a video id"
        )
