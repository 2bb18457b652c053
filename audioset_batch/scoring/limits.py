"""What one file may cost a worker (time, checked between steps; result bytes; the reader's clip, chunk and frame
limits) and what its records hold (top-k, full scores, windows of recordings): each read from settings here."""

from __future__ import annotations

import time
from dataclasses import dataclass

from audioset_batch.errors import ConfigError, LimitExceededError
from audioset_batch.scoring.clip_records import OutputOptions
from audioset_batch.scoring.hdf5_reader import Limits
from audioset_batch.settings import Settings


@dataclass(frozen=True, slots=True)
class Deadline:
    """The per-file time limit, checked between steps: it holds even where a storage SDK retries
    through the worker's soft-time-limit signal."""

    at: float
    seconds: float

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        return cls(time.monotonic() + seconds, seconds)

    def check(self) -> None:
        if time.monotonic() > self.at:
            raise soft_time_limit_error(self.seconds)


def soft_time_limit_error(seconds: float) -> LimitExceededError:
    """The error a file gets when it outlives the soft time limit (checked here or signalled by Celery)."""
    return LimitExceededError(f"scoring took longer than AUDIOSET_SOFT_TIME_LIMIT={seconds:g}s")


OUTPUT_FLOOR_BYTES = 16 * 1024**2


@dataclass(frozen=True, slots=True)
class OutputCap:
    """The most result bytes one file may produce: ``AUDIOSET_MAX_OUTPUT_RATIO`` times the bytes it stores.

    Real embeddings barely compress, so their results stay a few times their size; 200,000 zero clips gzip to
    270 KB and would write 100 MB. Checked on a projection from the clips scored so far, so such a file is refused
    after its first chunk, not after all its CPU time.
    """

    limit: int
    stored: int
    ratio: float

    @classmethod
    def for_file(cls, stored: int, ratio: float) -> OutputCap:
        return cls(max(OUTPUT_FLOOR_BYTES, int(stored * ratio)), stored, ratio)

    def check(self, written: int, clips_done: int, clips_total: int) -> None:
        projected = written * clips_total // max(clips_done, 1)
        if projected > self.limit:
            raise LimitExceededError(
                f"its results would take about {projected} bytes for {clips_total} clips, over "
                f"AUDIOSET_MAX_OUTPUT_RATIO={self.ratio:g} x the {self.stored} bytes the file stores "
                f"(at least {OUTPUT_FLOOR_BYTES} bytes); a file of real embeddings stays far below it"
            )


def reader_limits(settings: Settings) -> Limits:
    """The reader's limits from settings: the one place they are read."""
    return Limits(
        max_clips=settings.max_clips, max_chunk_bytes=settings.max_chunk_bytes, max_frames=settings.max_frames
    )


def output_options(
    settings: Settings,
    top_k: int | None = None,
    full_scores: bool | None = None,
    labels: str | None = None,
    thresholds: list[float] | None = None,
    frames: int | None = None,
) -> OutputOptions:
    """What each record holds and how recordings are windowed: the one place these settings are read.
    ``thresholds`` and ``frames`` are the model's own (its manifest's); settings that cannot work with them are
    a :class:`ConfigError`."""
    mode = labels or settings.labels
    if frames is not None and not 1 <= settings.window_hop <= frames:
        raise ConfigError(
            f"AUDIOSET_WINDOW_HOP={settings.window_hop}: windows would skip frames; use 1..{frames} "
            f"(the model's window of {frames} frames)"
        )
    if mode == "threshold" and not thresholds:
        raise ConfigError(
            "labels by threshold need a model with per-class thresholds; add them with "
            "`audioset thresholds MODEL DATA…`, or use AUDIOSET_LABELS=top"
        )
    return OutputOptions(
        top_k=top_k or settings.top_k,
        full_scores=settings.full_scores if full_scores is None else full_scores,
        window_hop=settings.window_hop,
        event_threshold=settings.event_threshold,
        seconds_per_frame=settings.seconds_per_frame,
        labels=mode,
        thresholds=tuple(thresholds) if thresholds else None,
    )
