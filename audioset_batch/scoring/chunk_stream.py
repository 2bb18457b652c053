"""Overlapping the three stages of scoring a file: read, predict, encode, each on its own thread."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np

from audioset_batch.scoring.clip_records import Predict
from audioset_batch.scoring.hdf5_reader import Chunk, NonFiniteError

T = TypeVar("T")


def prefetched(chunks: Iterator[Chunk]) -> Iterator[Chunk]:
    """Read the next chunk on a helper thread while the caller scores this one.

    HDF5 reads and TensorFlow both release the GIL, so disk and model overlap; at most
    two chunks are in memory at once.
    """
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hdf5-read")
    try:
        pending = pool.submit(next, chunks, None)
        while (chunk := pending.result()) is not None:
            pending = pool.submit(next, chunks, None)
            yield chunk
    finally:
        pool.shutdown(wait=False, cancel_futures=True)  # never wait on a stuck helper: the file is failing anyway


def predicted(chunks: Iterator[Chunk], predict: Predict) -> Iterator[tuple[Chunk, np.ndarray]]:
    """Predict the next chunk on a helper thread while the caller encodes this one.

    The model releases the GIL, so encoding JSON (which holds it) no longer waits for
    the model and the model no longer waits for encoding. One thread owns the model,
    which is what a TFLite interpreter requires; at most one prediction is in flight.
    """
    for chunk, scores, _ in predicted_with(chunks, lambda x: (predict(x), None)):
        yield chunk, scores


def predicted_with(
    chunks: Iterator[Chunk], predict: Callable[[np.ndarray], tuple[np.ndarray, T]]
) -> Iterator[tuple[Chunk, np.ndarray, T]]:
    """:func:`predicted` with what else ``predict`` gives beside each chunk's scores (the frames a recording's
    events need), computed on the same helper thread."""

    def checked(chunk: Chunk) -> tuple[np.ndarray, T]:
        raw, extra = predict(chunk.x)
        scores = np.asarray(raw, dtype=np.float32)
        if scores.shape[0] != chunk.x.shape[0]:
            raise ValueError(f"model returned {scores.shape[0]} rows for {chunk.x.shape[0]} clips")
        last = chunk.start + len(scores) - 1
        if not np.isfinite(scores).all():
            raise NonFiniteError(f"the model gave non-finite scores for clips {chunk.start}..{last}")
        return scores, extra

    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="predict")
    try:
        current = next(chunks, None)
        if current is None:
            return
        pending = pool.submit(checked, current)
        for following in chunks:
            scores, extra = pending.result()
            pending = pool.submit(checked, following)
            yield current, scores, extra
            current = following
        yield current, *pending.result()
    finally:
        # On an error the file fails at once; a prediction still running is abandoned, not awaited
        # (the worker reloads its model after an unexpected error, so nothing reuses its state).
        pool.shutdown(wait=False, cancel_futures=True)
