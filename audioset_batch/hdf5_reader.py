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

import h5py
import numpy as np

from audioset_batch.errors import InputFileError, LimitExceededError

EMBEDDING_WIDTH = 128


class NotHDF5Error(InputFileError):
    """The bytes are not an HDF5 file."""


class EmptyFileError(InputFileError):
    """The object has zero bytes."""


class TruncatedFileError(InputFileError):
    """The file ends before the data it declares."""


class CorruptFileError(InputFileError):
    """HDF5 could not read the file's structure or data."""


class LayoutError(InputFileError):
    """A dataset is missing, or has the wrong rank, width, length or type."""


class MissingDatasetError(LayoutError):
    """A required dataset (``x``) is absent."""


class EmptyDatasetError(LayoutError):
    """``x`` holds zero clips (or zero frames)."""


class NonFiniteError(InputFileError):
    """Float embeddings contain NaN or infinity."""


@dataclass(frozen=True, slots=True)
class Chunk:
    start: int
    x: np.ndarray
    video_ids: list[str | None] | None
    start_times: np.ndarray | None
    y: np.ndarray | None


@dataclass(frozen=True, slots=True)
class Limits:
    max_clips: int = 10_000_000
    max_chunk_bytes: int = 256 * 1024**2


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

    def __init__(self, path: str | Path, limits: Limits | None = None) -> None:
        self.path = Path(path)
        self.limits = limits or Limits()
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
        if name not in self._file:
            if required:
                raise MissingDatasetError(
                    f"dataset '{name}' is missing (datasets present: {sorted(self._file.keys())})"
                )
            return None
        item = self._file[name]
        if not isinstance(item, h5py.Dataset):
            raise LayoutError(f"'{name}' is a {type(item).__name__}, expected a dataset")
        return item

    def _check_chunking(self, name: str, ds: h5py.Dataset) -> None:
        if ds.chunks is None:
            return
        chunk_bytes = math.prod(ds.chunks) * ds.dtype.itemsize
        if chunk_bytes > self.limits.max_chunk_bytes:
            raise LimitExceededError(
                f"dataset '{name}' has HDF5 chunks of {chunk_bytes} bytes, over the limit "
                f"AUDIOSET_MAX_CHUNK_BYTES={self.limits.max_chunk_bytes} (possible compression bomb)"
            )

    def _validate(self) -> None:
        x = self._dataset("x", required=True)
        assert x is not None
        if x.ndim != 3:
            raise LayoutError(
                f"dataset 'x' has rank {x.ndim} (shape {x.shape}); expected 3: clips x frames x {EMBEDDING_WIDTH}"
            )
        clips, frames, width = x.shape
        if width != EMBEDDING_WIDTH:
            raise LayoutError(f"dataset 'x' has width {width} (shape {x.shape}); expected {EMBEDDING_WIDTH}")
        if clips == 0 or frames == 0:
            raise EmptyDatasetError(f"dataset 'x' holds no clips (shape {x.shape})")
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

        self.video_ids = self._dataset("video_id_list", required=False)
        if self.video_ids is not None:
            self._check_vector("video_id_list", self.video_ids)
            if self.video_ids.dtype.kind not in {"S", "U", "O"}:
                raise LayoutError(f"dataset 'video_id_list' has dtype {self.video_ids.dtype}; expected strings")
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
            self._check_chunking("y", self.y)

    def _check_vector(self, name: str, ds: h5py.Dataset) -> None:
        if ds.ndim != 1 or ds.shape[0] != self.clips:
            raise LayoutError(f"dataset '{name}' has shape {ds.shape}; expected ({self.clips},), one entry per clip")
        self._check_chunking(name, ds)

    @property
    def classes(self) -> int | None:
        return int(self.y.shape[1]) if self.y is not None else None

    def chunks(self, size: int) -> Iterator[Chunk]:
        """Yield consecutive clips, ``size`` at a time, in file order."""
        for start in range(0, self.clips, size):
            stop = min(start + size, self.clips)
            try:
                x = self.x[start:stop]
                ids = [_decode_id(v) for v in self.video_ids[start:stop]] if self.video_ids is not None else None
                times = (
                    np.asarray(self.start_times[start:stop], dtype=np.float64) if self.start_times is not None else None
                )
                y = np.asarray(self.y[start:stop]) if self.y is not None else None
            except OSError as exc:
                raise CorruptFileError(f"cannot read clips {start}..{stop - 1}: {exc}") from None
            if x.dtype != np.uint8 and not np.isfinite(x).all():
                bad = start + int(np.flatnonzero(~np.isfinite(x).reshape(len(x), -1).all(axis=1))[0])
                raise NonFiniteError(f"dataset 'x' has NaN or infinite values (first at clip {bad})")
            yield Chunk(start=start, x=x, video_ids=ids, start_times=times, y=y)
