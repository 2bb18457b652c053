"""Recordings of any length as windows of the model's length, and windows back into sound events.

Pure functions over arrays. A clip of ``T`` frames is cut into windows of ``width`` frames (the model's 10)
every ``hop`` frames; a last window is added flush with the end when the hops do not reach it, so every frame
is heard; a clip shorter than ``width`` is one window, zero-padded at the end as AudioSet pads short clips.

An event's edges fall where its windows put them (:func:`event_spans`) or, where the model scores each frame
(:mod:`model.frame_evidence`), on the frames themselves (:func:`frame_edges`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from model.clip_windows import cut_windows, hop_starts
from model.labels import ClassLabel


def event_spans(frame_starts: np.ndarray, frames: int, width: int, hop: int) -> tuple[np.ndarray, np.ndarray]:
    """The part of its clip each window stands for in an event, in frames: the middle ``hop`` frames of the
    window (overlapping windows then tile the clip without overlap), from the clip's start for its first window
    and to the clip's end for its last. With ``hop`` equal to the window, a window stands for all of itself."""
    margin = (width - hop) / 2
    starts = np.where(frame_starts == 0, 0.0, frame_starts + margin)
    last = hop_starts(frames, width, hop)[-1]
    ends = np.where(frame_starts >= last, float(min(frames, last + width)), frame_starts + margin + hop)
    return starts, np.maximum(ends, starts)


#: A frame counts as hearing a class at this share of the class's threshold: a frame's own probability runs lower
#: than its window's pooled one. Chosen on real recordings (``python -m benchmarks.event_edges``: time F1 0.401 with
#: window edges; 0.419, 0.428, 0.432 with frame edges at 1, 0.5 and 0.25 of the threshold; 0.434 at 0.125).
FRAME_EDGE_SCALE = 0.25


@dataclass(frozen=True, slots=True)
class HeardFrames:
    """For each window and class present in it (at or above the class's threshold), which of the window's frames
    reach the class's frame threshold: all an event's edges need of the per-frame evidence, a few bytes a window
    where the evidence itself is ``width x classes`` floats."""

    rows: np.ndarray  # window of each pair
    classes: np.ndarray  # class of each pair
    heard: np.ndarray  # (pairs, width) bool

    @staticmethod
    def joined(parts: Sequence[tuple[int, HeardFrames]]) -> HeardFrames:
        """Parts of consecutive windows, each with the row its first window has in the whole."""
        if not parts:
            return HeardFrames(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 0), bool))
        return HeardFrames(
            np.concatenate([first + part.rows for first, part in parts]),
            np.concatenate([part.classes for _, part in parts]),
            np.concatenate([part.heard for _, part in parts]),
        )


def heard_frames(
    scores: np.ndarray, evidence: np.ndarray, thresholds: np.ndarray, frame_thresholds: np.ndarray
) -> HeardFrames:
    """Windows' ``scores`` and per-frame ``evidence`` ``(windows, width, classes)`` reduced to :class:`HeardFrames`
    (a non-finite frame is never heard)."""
    rows, classes = np.nonzero(scores >= thresholds[None, :])
    return HeardFrames(rows, classes, evidence[rows, :, classes] >= frame_thresholds[classes][:, None])


def frame_edges(
    heard: HeardFrames, frame_starts: np.ndarray, frames: int, spf: float
) -> dict[tuple[int, int], tuple[float, float]]:
    """Where each window would start and end an event of each class present in it, in seconds: its first frame
    heard, and just after its last; padding past the clip's ``frames`` is never heard. A pair with no frame heard
    is left out: its event edge stays on the window's span (:func:`event_spans`)."""
    width = heard.heard.shape[1] if heard.heard.ndim == 2 else 0
    origins = frame_starts[heard.rows]
    inside = heard.heard & ((origins[:, None] + np.arange(width)[None, :]) < frames)
    some = inside.any(axis=1)
    first = origins + inside.argmax(axis=1)
    last = origins + width - inside[:, ::-1].argmax(axis=1)
    return {
        (int(row), int(c)): (float(start) * spf, float(end) * spf)
        for row, c, start, end in zip(heard.rows[some], heard.classes[some], first[some], last[some], strict=True)
    }


def pooled_clip_scores(predict: Callable[[np.ndarray], np.ndarray], x: np.ndarray, width: int, hop: int) -> np.ndarray:
    """Each clip's scores as the maximum over its windows (a class heard anywhere in the clip): how clips of any
    length are evaluated, and how a recording's metrics are computed."""
    starts = hop_starts(x.shape[1], width, hop)
    pooled = []
    for first in range(0, len(x), 1024):
        block = x[first : first + 1024]
        windows = np.concatenate([cut_windows(clip, 0, starts, width) for clip in block])
        scores = np.asarray(predict(windows), dtype=np.float32)
        pooled.append(scores.reshape(len(block), len(starts), -1).max(axis=1))
    return np.concatenate(pooled)


@dataclass(slots=True)
class Event:
    """A class heard over consecutive windows of one clip (seconds from the clip's start)."""

    start: float
    end: float
    peak: float
    peak_at: float
    windows: int


@dataclass(slots=True)
class EventTracker:
    """Merges consecutive windows of one clip where a class scores at or above its threshold into events.

    Fed window rows in file order (any number of calls); an event ends at the first window below threshold,
    at a new clip, or at :meth:`finish`. It runs from its first window's start edge to its last one's end edge:
    the window spans (:func:`event_spans`) or the frames (:func:`frame_edges`); at least ``shortest`` long.
    """

    thresholds: np.ndarray  # one per class
    classes: Sequence[ClassLabel]
    shortest: float = 0.0
    clip: int = -1  # the clip being fed; events of earlier clips have all been yielded
    _open: dict[int, Event] = field(default_factory=dict)

    def feed(
        self,
        clips: np.ndarray,
        starts: np.ndarray,
        ends: np.ndarray,
        scores: np.ndarray,
        peaks: np.ndarray,
        edges: Mapping[tuple[int, int], tuple[float, float]] | None = None,
    ) -> Iterator[tuple[int, ClassLabel, Event]]:
        """Windows (clip index, the span each window stands for in an event, scores, and each window's own start
        for the peak; ``edges``: per (window, class) the frame edges that replace the span, :func:`frame_edges`);
        yields each event that ended."""
        present = scores >= self.thresholds[None, :]
        edges = edges or {}
        for row in range(len(scores)):
            clip = int(clips[row])
            if clip != self.clip:
                yield from self._close_all()
                self.clip = clip
            on = set(np.flatnonzero(present[row]).tolist())
            for index in [i for i in self._open if i not in on]:
                yield self._close(index)
            for index in on:
                score = float(scores[row, index])
                event = self._open.get(index)
                start, end = edges.get((row, index), (float(starts[row]), float(ends[row])))
                if event is None:
                    self._open[index] = Event(start, end, score, float(peaks[row]), 1)
                    continue
                event.end = end
                event.windows += 1
                if score > event.peak:
                    event.peak, event.peak_at = score, float(peaks[row])

    def finish(self) -> Iterator[tuple[int, ClassLabel, Event]]:
        yield from self._close_all()

    def _close_all(self) -> Iterator[tuple[int, ClassLabel, Event]]:
        for index in sorted(self._open, key=lambda i: (self._open[i].start, i)):
            yield self._close(index, keep=True)
        self._open.clear()

    def _close(self, index: int, keep: bool = False) -> tuple[int, ClassLabel, Event]:
        event = self._open[index] if keep else self._open.pop(index)
        event.end = max(event.end, event.start + self.shortest)  # frame edges of different windows may cross
        return self.clip, self.classes[index], event


def event_record(
    clip: int,
    label: ClassLabel,
    event: Event,
    *,
    source: str,
    model: str,
    video_id: str | None,
    start_time: float | None,
) -> dict[str, object]:
    """One line of ``<key>.events.jsonl``: a class heard over a span of a clip or recording."""
    return {
        "source": source,
        "index": clip,
        "video_id": video_id,
        "start_time_seconds": start_time,
        "model": model,
        "class": {"index": label.index, "mid": label.mid, "name": label.name},
        "start_seconds": round(event.start, 3),
        "end_seconds": round(event.end, 3),
        "peak_score": round(event.peak, 4),
        "peak_seconds": round(event.peak_at, 3),
        "windows": event.windows,
    }
