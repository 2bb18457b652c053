"""The scoring core: embeddings in, JSON Lines records out. No Celery, no buckets.

Everything per clip is vectorised (top-k with ``argpartition``) and records
are encoded with orjson, which serialises numpy scalars and arrays natively.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import orjson

from model.labels import ClassLabel

Predict = Callable[[np.ndarray], np.ndarray]
#: Clip scores and, where the model has them, per-frame scores ``(clips, frames, classes)`` (else None).
PredictFrames = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]]
_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


@dataclass(frozen=True, slots=True)
class OutputOptions:
    top_k: int = 5
    full_scores: bool = False
    #: Recordings (clips of any other length than the model's): frames between window starts, the score at
    #: which a window counts a class as present (for events), and seconds per frame unless the file says.
    window_hop: int = 5
    event_threshold: float | None = None  # None: the model's per-class thresholds, or 0.3 without them
    seconds_per_frame: float = 0.96
    #: ``top``: the top-k labels of each record; ``threshold``: every label at or above its class's threshold.
    labels: str = "top"
    thresholds: tuple[float, ...] | None = None  # the model's per-class thresholds, if it has them

    def event_thresholds(self, classes: int) -> np.ndarray:
        """What a window must score for a class to count as present in an event."""
        if self.event_threshold is None and self.thresholds:
            return np.asarray(self.thresholds, dtype=np.float32)
        return np.full(classes, FALLBACK_EVENT_THRESHOLD if self.event_threshold is None else self.event_threshold)


#: Events' threshold for a model without per-class thresholds: the shipped model's best micro F1 on eval_half.
FALLBACK_EVENT_THRESHOLD = 0.3


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and values of the ``k`` highest scores per row, highest first; ties keep class order."""
    scores = np.asarray(scores)
    k = min(k, scores.shape[1])
    if k == scores.shape[1]:
        part = np.broadcast_to(np.arange(k), scores.shape).copy()
    else:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    part_scores = np.take_along_axis(scores, part, axis=1)
    # Sort the k candidates: by score descending, then class index ascending for ties.
    order = np.lexsort((part, -part_scores), axis=1)
    indices = np.take_along_axis(part, order, axis=1)
    return indices, np.take_along_axis(scores, indices, axis=1)


def top_label_counts(scores: np.ndarray) -> np.ndarray:
    """Per class, how many rows it scored highest in: summed over a job's files, its label distribution."""
    scores = np.asarray(scores)
    return np.bincount(np.argmax(scores, axis=1), minlength=scores.shape[1])


def above_thresholds(scores: np.ndarray, thresholds: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per row, the classes scoring at or above their threshold, highest first (possibly none)."""
    indices, values = [], []
    for row in np.asarray(scores):
        chosen = np.flatnonzero(row >= thresholds)
        chosen = chosen[np.lexsort((chosen, -row[chosen]))]
        indices.append(chosen)
        values.append(row[chosen])
    return indices, values


def encode_records(
    scores: np.ndarray,
    *,
    classes: Sequence[ClassLabel],
    source: str,
    model: str,
    start_index: int = 0,
    video_ids: Sequence[str | None] | None = None,
    start_times: np.ndarray | None = None,
    options: OutputOptions = OutputOptions(),
    windows: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> bytes:
    """One JSON line per clip (newline-terminated), in input order. With ``windows`` (each row's clip index, and
    start and end seconds within its clip), one line per window, its ``index`` the clip's."""
    scores = np.asarray(scores, dtype=np.float32)
    if scores.ndim != 2 or scores.shape[1] != len(classes):
        raise ValueError(f"scores shape {scores.shape} does not match {len(classes)} classes")
    indices: Sequence[np.ndarray] | np.ndarray
    values: Sequence[np.ndarray] | np.ndarray
    if options.labels == "threshold" and options.thresholds:
        indices, values = above_thresholds(scores, np.asarray(options.thresholds, dtype=np.float32))
    else:
        indices, values = top_k(scores, options.top_k)
    labelled = [{"index": i, "mid": c.mid, "name": c.name} for i, c in enumerate(classes)]
    # Python lists, converted once per chunk: per-row numpy indexing was a third of the encoding time
    chosen = [np.asarray(row).tolist() for row in indices] if isinstance(indices, list) else indices.tolist()
    seconds = None if start_times is None else np.asarray(start_times, dtype=np.float64).tolist()
    starts = None if seconds is None else [t if math.isfinite(t) else None for t in seconds]
    lines = []
    for row in range(scores.shape[0]):
        record: dict[str, object] = {
            "source": source,
            "index": start_index + row if windows is None else int(windows[0][row]),
            "video_id": video_ids[row] if video_ids is not None else None,
            "start_time_seconds": None if starts is None else starts[row],
        }
        if windows is not None:
            record["offset_seconds"] = round(float(windows[1][row]), 3)
            record["end_seconds"] = round(float(windows[2][row]), 3)
        record |= {
            "model": model,
            "labels": [{**labelled[c], "score": v} for c, v in zip(chosen[row], values[row], strict=True)],
        }
        if options.full_scores:
            record["scores"] = scores[row]
        lines.append(orjson.dumps(record, option=_OPTIONS))
    lines.append(b"")
    return b"\n".join(lines)


def score_chunk(
    x: np.ndarray,
    predict: Predict,
    *,
    classes: Sequence[ClassLabel],
    source: str,
    model: str,
    start_index: int = 0,
    video_ids: Sequence[str | None] | None = None,
    start_times: np.ndarray | None = None,
    options: OutputOptions = OutputOptions(),
) -> tuple[bytes, np.ndarray]:
    """Predict a chunk of clips and encode their records; returns (jsonl bytes, scores)."""
    scores = np.asarray(predict(x), dtype=np.float32)
    if scores.shape[0] != x.shape[0]:
        raise ValueError(f"model returned {scores.shape[0]} rows for {x.shape[0]} clips")
    encoded = encode_records(
        scores,
        classes=classes,
        source=source,
        model=model,
        start_index=start_index,
        video_ids=video_ids,
        start_times=start_times,
        options=options,
    )
    return encoded, scores
