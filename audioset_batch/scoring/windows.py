"""Recordings of any length as windows of the model's length, and windows back into sound events.

Pure functions over arrays. A clip of ``T`` frames is cut into windows of ``width`` frames (the model's 10)
every ``hop`` frames; a last window is added flush with the end when the hops do not reach it, so every frame
is heard; a clip shorter than ``width`` is one window, zero-padded at the end as AudioSet pads short clips.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
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
    at a new clip, or at :meth:`finish`. It spans from its first window's span start to its last one's span end
    (:func:`event_spans`).
    """

    thresholds: np.ndarray  # one per class
    classes: Sequence[ClassLabel]
    clip: int = -1  # the clip being fed; events of earlier clips have all been yielded
    _open: dict[int, Event] = field(default_factory=dict)

    def feed(
        self, clips: np.ndarray, starts: np.ndarray, ends: np.ndarray, scores: np.ndarray, peaks: np.ndarray
    ) -> Iterator[tuple[int, ClassLabel, Event]]:
        """Windows (clip index, the span each window stands for in an event, scores, and each window's own start
        for the peak); yields each event that ended."""
        present = scores >= self.thresholds[None, :]
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
                if event is None:
                    self._open[index] = Event(float(starts[row]), float(ends[row]), score, float(peaks[row]), 1)
                    continue
                event.end = float(ends[row])
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
