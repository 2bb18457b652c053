"""Scoring a file of recordings (clips of any length but the model's): window records, events, clip metrics.

The same read → predict → encode pipeline as clips (:mod:`chunk_stream`), over windows cut by the reader. Each
window is one record; consecutive windows of a clip where a class stays at or above the event threshold become
one event, its edges on the frames where the model scores each frame (``predict_frames``); a clip's score for its
metrics is the maximum over its windows (a class heard anywhere in the clip).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO

import numpy as np
import orjson

from audioset_batch.scoring.chunk_stream import predicted_with, prefetched
from audioset_batch.scoring.clip_records import (
    OutputOptions,
    Predict,
    PredictFrames,
    encode_records,
    top_label_counts,
)
from audioset_batch.scoring.hdf5_reader import EmbeddingFile
from audioset_batch.scoring.limits import Deadline, OutputCap
from audioset_batch.scoring.window_reader import window_chunks, window_count
from audioset_batch.scoring.windows import (
    FRAME_EDGE_SCALE,
    Event,
    EventTracker,
    HeardFrames,
    event_record,
    event_spans,
    frame_edges,
    heard_frames,
)
from model.labels import ClassLabel
from model.metrics import StreamedEvaluation


@dataclass(slots=True)
class WindowScore:
    windows: int = 0
    events: int = 0
    written: int = 0
    firsts: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    seconds_per_frame: float = 0.0
    #: Where events' edges fell: on ``frames`` (the model's per-frame evidence) or on window spans.
    event_edges: str = "windows"


@dataclass(slots=True)
class _ClipPool:
    """The running maximum over one clip's windows, handed to the evaluation when the clip ends."""

    embeddings: EmbeddingFile
    streamed: StreamedEvaluation | None
    clip: int = -1
    best: np.ndarray | None = None

    def add(self, clips: np.ndarray, scores: np.ndarray) -> None:
        if self.streamed is None:
            return
        for clip in np.unique(clips):
            rows = scores[clips == clip].max(axis=0)
            if clip != self.clip:
                self.flush()
                self.clip, self.best = int(clip), rows
            else:
                assert self.best is not None
                self.best = np.maximum(self.best, rows)

    def flush(self) -> None:
        if self.streamed is not None and self.best is not None:
            labels = self.embeddings.labels_of(self.clip)
            if labels is not None:
                self.streamed.add(labels[None].astype(bool), self.best[None])
        self.best = None


def score_windows(
    embeddings: EmbeddingFile,
    out: IO[bytes],
    events_out: IO[bytes] | None,
    *,
    predict: Predict,
    classes: list[ClassLabel],
    model: str,
    source: str,
    options: OutputOptions,
    width: int,
    predict_frames: PredictFrames | None = None,
    chunk_rows: int,
    streamed: StreamedEvaluation | None = None,
    deadline: Deadline | None = None,
    cap: OutputCap | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> WindowScore:
    """Score every window of every clip into ``out`` and its events into ``events_out``."""
    spf = embeddings.seconds_per_frame or options.seconds_per_frame
    total = window_count(embeddings, width, options.window_hop)
    result = WindowScore(firsts=np.zeros(len(classes), dtype=np.int64), seconds_per_frame=spf)
    thresholds = options.event_thresholds(len(classes))
    tracker = EventTracker(thresholds, classes, shortest=spf)
    pool = _ClipPool(embeddings, streamed)
    about: dict[int, tuple[str | None, float | None]] = {}  # clip -> video id, start time: for its events

    def write_events(ended: list[tuple[int, ClassLabel, Event]]) -> None:
        for clip, label, event in ended:
            video_id, start_time = about.get(clip, (None, None))
            record = event_record(
                clip, label, event, source=source, model=model, video_id=video_id, start_time=start_time
            )
            if events_out is not None:
                line = orjson.dumps(record) + b"\n"
                result.written += len(line)
                events_out.write(line)
            result.events += 1

    chunks = window_chunks(embeddings, width, options.window_hop, chunk_rows)
    forward: Callable[[np.ndarray], tuple[np.ndarray, HeardFrames | None]] = lambda x: (predict(x), None)  # noqa: E731
    if predict_frames is not None:
        result.event_edges = "frames"
        forward = _frames_heard(predict_frames, width, thresholds, thresholds * FRAME_EDGE_SCALE)
    for chunk, scores, heard in predicted_with(prefetched(chunks), forward):
        if deadline is not None:
            deadline.check()
        assert chunk.clip_index is not None and chunk.frame_starts is not None
        starts = chunk.frame_starts * spf
        ends = np.minimum(chunk.frame_starts + width, embeddings.frames) * spf
        for clip in np.unique(chunk.clip_index):
            first = int(np.flatnonzero(chunk.clip_index == clip)[0])
            start_time = None if chunk.start_times is None else float(chunk.start_times[first])
            about[int(clip)] = (chunk.video_ids[first] if chunk.video_ids else None, start_time)
        lines = encode_records(
            scores,
            classes=classes,
            source=source,
            model=model,
            video_ids=chunk.video_ids,
            start_times=chunk.start_times,
            options=options,
            windows=(chunk.clip_index, starts, ends),
        )
        result.written += len(lines)
        result.windows += len(scores)
        result.firsts += top_label_counts(scores)
        if cap is not None:
            cap.check(result.written, chunk.start + len(scores), total)
        out.write(lines)
        span_starts, span_ends = event_spans(chunk.frame_starts, embeddings.frames, width, options.window_hop)
        edges = None if heard is None else frame_edges(heard, chunk.frame_starts, embeddings.frames, spf)
        write_events(list(tracker.feed(chunk.clip_index, span_starts * spf, span_ends * spf, scores, starts, edges)))
        about = {clip: info for clip, info in about.items() if clip >= tracker.clip}  # earlier clips' events are out
        pool.add(chunk.clip_index, scores)
        if progress is not None:
            progress(chunk.start + len(scores), total)
    write_events(list(tracker.finish()))
    pool.flush()
    return result


#: Windows predicted at a time for their per-frame evidence: it is ``width x classes`` floats a window (21 MB for
#: 1,024 windows of the shipped model), reduced at once to the few frames events need.
EVIDENCE_ROWS = 1024


def _frames_heard(
    predict_frames: PredictFrames, width: int, thresholds: np.ndarray, frame_thresholds: np.ndarray
) -> Callable[[np.ndarray], tuple[np.ndarray, HeardFrames | None]]:
    """Scores and :class:`HeardFrames` of a chunk of windows, never holding more than :data:`EVIDENCE_ROWS` windows'
    evidence (a chunk is thousands of windows)."""

    def forward(x: np.ndarray) -> tuple[np.ndarray, HeardFrames | None]:
        scores, parts = [], []
        for first in range(0, len(x), EVIDENCE_ROWS):
            batch = x[first : first + EVIDENCE_ROWS]
            batch_scores, evidence = predict_frames(batch)
            batch_scores = np.asarray(batch_scores, dtype=np.float32)
            scores.append(batch_scores)
            if evidence is None:
                return np.concatenate([*scores, predict_frames(x[first + len(batch) :])[0]]), None
            if evidence.shape != (len(batch), width, len(thresholds)):
                raise ValueError(f"model returned per-frame scores {evidence.shape} for {len(batch)} windows")
            parts.append((first, heard_frames(batch_scores, evidence, thresholds, frame_thresholds)))
        if not scores:
            return np.zeros((0, len(thresholds)), np.float32), None
        return np.concatenate(scores), HeardFrames.joined(parts)

    return forward
