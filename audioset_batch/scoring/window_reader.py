"""Reading a file of recordings as windows of the model's length (cut by :mod:`model.clip_windows`), bounded by the
reader's read budget: long clips a slice of frames at a time, short clips many whole clips to a read."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from audioset_batch.errors import CorruptFileError
from audioset_batch.scoring.embedding_values import check_values
from audioset_batch.scoring.hdf5_reader import EMBEDDING_WIDTH, Chunk, EmbeddingFile
from model.clip_windows import cut_windows, hop_starts


def window_count(embeddings: EmbeddingFile, width: int, hop: int) -> int:
    return embeddings.clips * len(hop_starts(embeddings.frames, width, hop))


def window_chunks(embeddings: EmbeddingFile, width: int, hop: int, size: int) -> Iterator[Chunk]:
    """Every clip's windows (:func:`~model.clip_windows.hop_starts`), in file order, at most
    ``size`` per chunk and ``Limits.max_read_bytes`` per read: a long recording is read a slice of frames at a
    time, never whole."""
    starts = hop_starts(embeddings.frames, width, hop)
    window_bytes = width * EMBEDDING_WIDTH * int(embeddings.x.dtype.itemsize) + 64
    size = max(1, min(size, embeddings.limits.max_read_bytes // (2 * window_bytes)))
    if not embeddings.recording and len(starts) <= size:  # short clips: many whole clips to a chunk, one read each
        yield from _clip_block_windows(embeddings, starts, width, size)
        return
    row = 0
    for clip in range(embeddings.clips):
        video_id = embeddings.read_ids(clip, clip + 1)[0] if embeddings.video_ids is not None else None
        start_time = float(embeddings.start_times[clip]) if embeddings.start_times is not None else None
        for first in range(0, len(starts), size):
            batch = starts[first : first + size]
            lo, hi = int(batch[0]), min(int(batch[-1]) + width, embeddings.frames)
            try:
                frames = np.asarray(embeddings.x[lo:hi] if embeddings.recording else embeddings.x[clip, lo:hi])
            except OSError as exc:
                raise CorruptFileError(f"cannot read clip {clip} frames {lo}..{hi - 1}: {exc}") from None
            check_values(frames[None], embeddings.limits.max_abs_value, clip, f" (frames {lo}..{hi - 1})")
            x = cut_windows(frames, lo, batch, width)
            yield Chunk(
                start=row,
                x=x,
                video_ids=[video_id] * len(batch),
                start_times=None if start_time is None else np.full(len(batch), start_time),
                y=None,
                clip_index=np.full(len(batch), clip, dtype=np.int64),
                frame_starts=batch,
            )
            row += len(batch)


def _clip_block_windows(embeddings: EmbeddingFile, starts: np.ndarray, width: int, size: int) -> Iterator[Chunk]:
    per_clip = len(starts)
    block = max(1, min(size // per_clip, embeddings.limits.max_read_bytes // (2 * embeddings.clip_bytes())))
    for first in range(0, embeddings.clips, block):
        stop = min(first + block, embeddings.clips)
        try:
            frames = np.asarray(embeddings.x[first:stop])
        except OSError as exc:
            raise CorruptFileError(f"cannot read clips {first}..{stop - 1}: {exc}") from None
        check_values(frames, embeddings.limits.max_abs_value, first)
        ids = embeddings.read_ids(first, stop) if embeddings.video_ids is not None else None
        times = (
            None if embeddings.start_times is None else np.asarray(embeddings.start_times[first:stop], dtype=np.float64)
        )
        yield Chunk(
            start=first * per_clip,
            x=np.concatenate([cut_windows(clip, 0, starts, width) for clip in frames]),
            video_ids=None if ids is None else [video_id for video_id in ids for _ in range(per_clip)],
            start_times=None if times is None else np.repeat(times, per_clip),
            y=None,
            clip_index=np.repeat(np.arange(first, stop, dtype=np.int64), per_clip),
            frame_starts=np.tile(starts, stop - first),
        )
