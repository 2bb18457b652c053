"""Reverse search over JSON Lines results: every clip where a label scored at least some threshold.

Streams results objects one at a time and keeps only the best ``limit`` hits in a heap,
so memory stays flat over any number of results.
"""

from __future__ import annotations

import difflib
import heapq
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeGuard
from urllib.parse import quote

import orjson

from audioset_batch.errors import AudiosetError
from audioset_batch.results.keys import EVENTS_SUFFIX, JSONL_SUFFIX
from audioset_batch.storage.object_store import ObjectStore, ObjectURL
from model.labels import ClassLabel

#: The key under which a read record names the results object it came from.
ORIGIN = "results"


class UnknownLabelError(AudiosetError):
    """No class matches the query; the message lists close matches."""


@dataclass(frozen=True, slots=True, order=True)
class Hit:
    score: float
    source: str
    index: int
    video_id: str | None
    start_time_seconds: float | None
    results: str = ""  # the results object (or file) the hit was read from
    offset_seconds: float | None = None  # a window of a recording: where it starts within the clip

    @property
    def youtube_url(self) -> str | None:
        if not self.video_id:
            return None
        start = int((self.start_time_seconds or 0) + (self.offset_seconds or 0))
        return f"https://www.youtube.com/watch?v={quote(self.video_id, safe='')}&t={start}"

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "youtube_url": self.youtube_url}


def resolve_label(query: str, classes: list[ClassLabel]) -> ClassLabel:
    """Match a display name or mid, case-insensitively; suggest close names on a miss."""
    wanted = query.strip().lower()
    for label in classes:
        if wanted in (label.name.lower(), label.mid.lower()):
            return label
    names = [label.name for label in classes]
    close = difflib.get_close_matches(query, names, n=5, cutoff=0.6)
    close += [n for n in names if wanted and wanted in n.lower() and n not in close][: 5 - len(close)]
    hint = f"; did you mean: {', '.join(close)}?" if close else ""
    raise UnknownLabelError(f"no class named {query!r}{hint}")


def clip_score(record: dict[str, Any], label: ClassLabel) -> float | None:
    scores = record.get("scores")
    if isinstance(scores, list) and len(scores) > label.index and isinstance(scores[label.index], int | float):
        return float(scores[label.index])
    labels = record.get("labels")
    for entry in labels if isinstance(labels, list) else []:
        if (
            isinstance(entry, dict)
            and entry.get("index") == label.index
            and isinstance(entry.get("score"), int | float)
        ):
            return float(entry["score"])
    return None  # not in this clip's top-k (below every listed score), or not a score at all


def search_records(records: Iterable[dict[str, Any]], label: ClassLabel, min_score: float, limit: int) -> list[Hit]:
    heap: list[Hit] = []
    for record in records:
        score = clip_score(record, label)
        if score is None or score < min_score:
            continue
        video_id, start, offset = record.get("video_id"), record.get("start_time_seconds"), record.get("offset_seconds")
        hit = Hit(
            score,
            str(record.get("source")),
            index if isinstance(index := record.get("index", -1), int) else -1,
            video_id if isinstance(video_id, str) else None,
            float(start) if isinstance(start, int | float) else None,
            str(record.get(ORIGIN, "")),
            float(offset) if isinstance(offset, int | float) else None,
        )
        if len(heap) < limit:
            heapq.heappush(heap, hit)
        elif hit > heap[0]:
            heapq.heapreplace(heap, hit)
    return sorted(heap, reverse=True)


@dataclass(slots=True)
class Skipped:
    """Lines that were not result records (truncated, edited, foreign): counted, never fatal."""

    lines: int = 0
    first: str | None = None  # where the first one was, for the warning

    def add(self, origin: str, number: int) -> None:
        self.lines += 1
        if self.first is None:
            self.first = f"{origin} line {number}"


def _lines(lines: Iterable[bytes], origin: str, skipped: Skipped | None) -> Iterator[dict[str, Any]]:
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            record = None
        if not isinstance(record, dict):
            if skipped is not None:
                skipped.add(origin, number)
            continue
        record[ORIGIN] = origin
        yield record


def result_records(
    store: ObjectStore, url: ObjectURL, skipped: Skipped | None = None, events: bool = False
) -> Iterator[dict[str, Any]]:
    """Every line of every ``.jsonl`` object under the URL's prefix, one line at a time: clip and window records,
    or with ``events`` the events files' lines (and nothing else): the two are never mixed.

    Each object is downloaded to a temporary file and read line by line, so memory follows the longest line, not
    the largest object. Each record carries the results object it came from under ``"results"``.
    """
    for info in store.list(url.bucket, url.key):
        if not info.key.endswith(JSONL_SUFFIX) or info.key.endswith(EVENTS_SUFFIX) != events:
            continue
        with tempfile.TemporaryFile() as fh:
            store.download(url.bucket, info.key, fh)
            fh.seek(0)
            yield from _lines(fh, str(url.with_key(info.key)), skipped)


def folder_records(folder: Path, skipped: Skipped | None = None, events: bool = False) -> Iterator[dict[str, Any]]:
    """The same over a local folder of results (downloaded, or a folder bucket given by path)."""
    for path in sorted(folder.rglob(f"*{JSONL_SUFFIX}")):
        plain = path.is_file() and not path.is_symlink() and not path.name.startswith(".")
        if plain and path.name.endswith(EVENTS_SUFFIX) == events:
            with path.open("rb") as fh:
                yield from _lines(fh, str(path), skipped)


@dataclass(frozen=True, slots=True, order=True)
class EventHit:
    """A sound event of a recording, found by its class: where it is, and how sure the model was at its peak."""

    score: float  # the event's peak
    source: str
    index: int
    start_seconds: float
    end_seconds: float
    peak_seconds: float
    video_id: str | None
    start_time_seconds: float | None
    results: str = ""

    @property
    def youtube_url(self) -> str | None:
        """The video at the event's peak."""
        if not self.video_id:
            return None
        start = int((self.start_time_seconds or 0) + self.peak_seconds)
        return f"https://www.youtube.com/watch?v={quote(self.video_id, safe='')}&t={start}"

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "youtube_url": self.youtube_url}


def search_events(records: Iterable[dict[str, Any]], label: ClassLabel, min_score: float, limit: int) -> list[EventHit]:
    """The events of ``label`` whose peak scored at least ``min_score``, best peak first."""
    heap: list[EventHit] = []
    for record in records:
        kind = record.get("class")
        if not isinstance(kind, dict) or kind.get("index") != label.index:
            continue
        peak, start, end, at = (
            record.get(name) for name in ("peak_score", "start_seconds", "end_seconds", "peak_seconds")
        )
        if not (_number(peak) and _number(start) and _number(end) and _number(at)) or float(peak) < min_score:
            continue
        video_id, time = record.get("video_id"), record.get("start_time_seconds")
        hit = EventHit(
            score=float(peak),
            source=str(record.get("source")),
            index=index if isinstance(index := record.get("index", -1), int) else -1,
            start_seconds=float(start),
            end_seconds=float(end),
            peak_seconds=float(at),
            video_id=video_id if isinstance(video_id, str) else None,
            start_time_seconds=float(time) if _number(time) else None,
            results=str(record.get(ORIGIN, "")),
        )
        if len(heap) < limit:
            heapq.heappush(heap, hit)
        elif hit > heap[0]:
            heapq.heapreplace(heap, hit)
    return sorted(heap, reverse=True)


def _number(value: object) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)
