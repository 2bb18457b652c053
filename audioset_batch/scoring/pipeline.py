"""Score one object from a bucket into the results bucket. Knows storage, not Celery."""

from __future__ import annotations

import contextlib
import logging
import socket
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

import numpy as np

from audioset_batch.errors import InputFileError, LimitExceededError, StorageError
from audioset_batch.results.failures import record_failure
from audioset_batch.results.keys import ResultKeys, result_keys
from audioset_batch.results.records import dumps, loads, now
from audioset_batch.retry_policy import should_retry
from audioset_batch.scoring.chunk_stream import predicted, prefetched
from audioset_batch.scoring.clip_records import OutputOptions, Predict, PredictFrames, encode_records, top_label_counts
from audioset_batch.scoring.hdf5_reader import EmbeddingFile, Limits
from audioset_batch.scoring.limits import Deadline, OutputCap, output_options, reader_limits
from audioset_batch.scoring.made_with import made_with, still_stands
from audioset_batch.scoring.model_loading import load_predictor
from audioset_batch.scoring.recordings import WindowScore, score_windows
from audioset_batch.settings import Settings
from audioset_batch.storage.factory import store_for
from audioset_batch.storage.object_store import ObjectStore, ObjectURL, translate_os_error
from model.inference import Predictor
from model.labels import ClassLabel
from model.metrics import StreamedEvaluation

log = logging.getLogger("audioset.pipeline")
ALREADY_SCORED = "already scored: same ETag, model and output settings (--force scores it again)"
Status = Literal["scored", "skipped", "failed"]
Progress = Callable[[int, int], None]  # clips scored so far, clips in the file


@dataclass(slots=True)
class Outcome:
    source: str
    status: Status
    clips: int = 0
    error: str | None = None
    message: str | None = None
    result: str | None = None


@dataclass(slots=True)
class FileScore:
    clips: int
    metrics: dict[str, Any] | None
    seconds: float
    notes: list[str] = field(default_factory=list)
    #: Clips per class that ranked first in them: a job's label distribution is the sum over its files.
    top_labels: dict[str, int] = field(default_factory=dict)
    #: Average precision of each class with a positive clip, when the file carries labels.
    per_class_ap: dict[str, float] | None = None
    #: Recordings only: windows scored, events found, and the seconds per frame their offsets use.
    windows: int | None = None
    events: int | None = None
    seconds_per_frame: float | None = None
    event_edges: str | None = None


def score_file(
    path: Path,
    out: IO[bytes],
    *,
    predict: Predict,
    classes: list[ClassLabel],
    model: str,
    source: str,
    options: OutputOptions,
    limits: Limits | None = None,
    chunk_clips: int = 8192,
    metrics_max_clips: int = 200_000,
    deadline: Deadline | None = None,
    frames: int | None = None,
    max_output_ratio: float | None = None,
    progress: Progress | None = None,
    events_out: IO[bytes] | None = None,
    predict_frames: PredictFrames | None = None,
) -> FileScore:
    """Read, validate and score one local HDF5 file, writing JSON Lines to ``out``; ``progress(done, total)``
    hears of the clips scored after each chunk.

    Shared by the worker and ``audioset score``, so both write identical lines. ``frames`` is the model's frames
    per clip: a file of clips of any other length (or of one T x 128 recording) is scored as windows
    (:mod:`recordings`), one record per window, and its events go to ``events_out``, their edges on the frames
    where ``predict_frames`` gives per-frame scores. ``max_output_ratio`` bounds the bytes written (:class:`OutputCap`).
    """
    started = time.monotonic()
    cap = OutputCap.for_file(path.stat().st_size, max_output_ratio) if max_output_ratio else None
    written = 0
    notes: list[str] = []
    streamed: StreamedEvaluation | None = None
    metrics = None
    per_class_ap = None
    recording: WindowScore | None = None
    firsts = np.zeros(len(classes), dtype=np.int64)
    with contextlib.ExitStack() as resources:
        windows = frames is not None
        embeddings = resources.enter_context(EmbeddingFile(path, limits or Limits(), frames=frames, windows=windows))
        want_metrics = embeddings.y is not None
        if want_metrics and embeddings.classes != len(classes):
            notes.append(f"metrics skipped: y has {embeddings.classes} classes, the model {len(classes)}")
            want_metrics = False
        if want_metrics and embeddings.clips > metrics_max_clips:
            notes.append(
                f"metrics skipped: {embeddings.clips} clips exceed AUDIOSET_METRICS_MAX_CLIPS={metrics_max_clips}"
            )
            want_metrics = False
        if want_metrics:  # scores and labels go to temporary files, not memory: see StreamedEvaluation
            streamed = resources.enter_context(StreamedEvaluation(len(classes)))
        else:
            embeddings.skip_labels()
        if embeddings.windowed:
            assert frames is not None
            recording = score_windows(
                embeddings,
                out,
                events_out,
                predict=predict,
                classes=classes,
                model=model,
                source=source,
                options=options,
                width=frames,
                predict_frames=predict_frames,
                chunk_rows=chunk_clips,
                streamed=streamed,
                deadline=deadline,
                cap=cap,
                progress=progress,
            )
            firsts = recording.firsts
        else:
            for chunk, scores in predicted(prefetched(embeddings.chunks(chunk_clips)), predict):
                if deadline is not None:
                    deadline.check()
                lines = encode_records(
                    scores,
                    classes=classes,
                    source=source,
                    model=model,
                    start_index=chunk.start,
                    video_ids=chunk.video_ids,
                    start_times=chunk.start_times,
                    options=options,
                )
                written += len(lines)
                firsts += top_label_counts(scores)
                if cap is not None:
                    cap.check(written, chunk.start + len(scores), embeddings.clips)
                out.write(lines)
                if streamed is not None and chunk.y is not None:
                    streamed.add(chunk.y.astype(bool), scores)
                if progress is not None:
                    progress(chunk.start + len(scores), embeddings.clips)
        clips = embeddings.clips
        if streamed is not None:
            try:
                evaluation = streamed.result()
                metrics = evaluation.summary()
                per_class_ap = {
                    str(c.index): round(c.average_precision, 4)
                    for c in evaluation.per_class
                    if c.average_precision is not None
                }
            except ValueError:  # no class has a positive clip
                notes.append("metrics skipped: y has no positive labels")
    return FileScore(
        clips=clips,
        metrics=metrics,
        seconds=time.monotonic() - started,
        notes=notes,
        top_labels={str(i): int(n) for i in np.flatnonzero(firsts) for n in [firsts[i]]},
        per_class_ap=per_class_ap,
        windows=None if recording is None else recording.windows,
        events=None if recording is None else recording.events,
        seconds_per_frame=None if recording is None else recording.seconds_per_frame,
        event_edges=None if recording is None else recording.event_edges,
    )


class ObjectScorer:
    """Scores objects named by URL (or local files) and writes their results, only ever under the results prefix.

    Build it with :meth:`from_settings`: the worker, ``audioset score``, ``audioset run`` and the
    benchmarks all do, so a setting that changes scoring changes it everywhere.
    """

    def __init__(
        self,
        settings: Settings,
        predict: Predict,
        classes: list[ClassLabel],
        model: str,
        frames: int | None = None,
        options: OutputOptions | None = None,
        *,
        runtime: str = "",
        predict_frames: PredictFrames | None = None,
    ) -> None:
        self.settings = settings
        self.predict = predict
        #: Clip and per-frame scores in one pass, for recordings' event edges (None: edges on window spans).
        self.predict_frames = predict_frames
        self.event_edges = "windows" if predict_frames is None else "frames"
        self.classes = classes
        self.model = model
        self.frames = frames
        self.options = options or output_options(settings, frames=frames)
        self.limits = reader_limits(settings)
        #: What computes the forward pass (``LiteRT``, ``OpenVINO``, ``TensorFlow``), for the worker's load line.
        self.runtime = runtime

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        model_path: Path | None = None,
        precision: str | None = None,
        top_k: int | None = None,
        full_scores: bool | None = None,
        labels: str | None = None,
        worker: bool = False,
        predictor: Predictor | None = None,
    ) -> ObjectScorer:
        """Load the model and build the scorer from settings; each keyword overrides its setting (``worker``:
        see :func:`load_predictor`; ``predictor``: a model already loaded, which a benchmark reuses)."""
        predictor = predictor or load_predictor(settings, model_path, precision, worker=worker)
        manifest = predictor.manifest
        options = output_options(
            settings, top_k, full_scores, labels, thresholds=manifest.threshold_values, frames=predictor.frames
        )
        return cls(
            settings,
            predictor.predict,
            manifest.classes,
            predictor.tag,
            predictor.frames,
            options,
            runtime=predictor.runtime,
            predict_frames=predictor.predict_frames if predictor.frame_evidence else None,
        )

    def score_local(
        self,
        path: Path,
        out: IO[bytes],
        source: str,
        deadline: Deadline | None = None,
        progress: Progress | None = None,
        events_out: IO[bytes] | None = None,
    ) -> FileScore:
        """Score one local file into ``out`` with this scorer's model, options and limits."""
        return score_file(
            path,
            out,
            predict=self.predict,
            classes=self.classes,
            model=self.model,
            source=source,
            options=self.options,
            limits=self.limits,
            chunk_clips=self.settings.read_chunk_clips,
            metrics_max_clips=self.settings.metrics_max_clips,
            deadline=deadline,
            frames=self.frames,
            max_output_ratio=self.settings.max_output_ratio,
            progress=progress,
            events_out=events_out,
            predict_frames=self.predict_frames,
        )

    def _store(self, url: ObjectURL) -> ObjectStore:
        """Results go to the same kind of store as the input (a COS endpoint, or the local root)."""
        return store_for(url.scheme, self.settings)

    def keys(self, url: ObjectURL) -> ResultKeys:
        return result_keys(url.bucket, url.key, self.settings.results_prefix)

    def already_scored(self, url: ObjectURL, etag: str) -> bool:
        summary = loads(self._store(url).get_bytes(self.settings.results_bucket, self.keys(url).summary))
        return still_stands(summary, etag, self.model, self.options, self.event_edges)

    def score(self, url: ObjectURL, *, force: bool = False, attempt: int = 1, job: str | None = None) -> Outcome:
        """Score one object. Input and storage errors become error records, except a transient error with
        attempts left (:func:`should_retry`), which propagates so the caller can retry."""
        source = f"{url.bucket}/{url.key}"
        etag: str | None = None
        deadline = Deadline.after(self.settings.soft_time_limit)
        try:
            keys = self.keys(url)
            store = self._store(url)
            info = store.stat(url.bucket, url.key)
            etag = info.etag
            if info.size > self.settings.max_object_bytes:
                raise LimitExceededError(
                    f"object is {info.size} bytes, over the limit "
                    f"AUDIOSET_MAX_OBJECT_BYTES={self.settings.max_object_bytes}"
                )
            if not force and self.already_scored(url, info.etag):
                log.info("skip %s: already scored (etag %s, %s)", source, info.etag, self.model)
                return Outcome(source, "skipped", message=ALREADY_SCORED, result=keys.jsonl)
            try:
                return self._score(url, keys, store, attempt=attempt, job=job, deadline=deadline)
            except OSError as exc:  # the worker's own temp disk: full is worth a retry, the rest is final
                raise translate_os_error(exc, f"{source} (worker temp folder)") from exc
        except (InputFileError, StorageError) as exc:
            if should_retry(exc, attempt, self.settings.max_attempts):
                raise
            self.record_failure(url, exc, attempts=attempt, etag=etag, job=job)
            return Outcome(source, "failed", error=type(exc).__name__, message=str(exc))

    def _score(
        self,
        url: ObjectURL,
        keys: ResultKeys,
        store: ObjectStore,
        *,
        attempt: int,
        job: str | None,
        deadline: Deadline,
    ) -> Outcome:
        source = f"{url.bucket}/{url.key}"
        bucket = self.settings.results_bucket
        t0 = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="audioset-") as tmp:
            local = Path(tmp) / "input.h5"
            with local.open("wb") as fh:
                info = store.download(url.bucket, url.key, fh)
            deadline.check()
            t1 = time.monotonic()
            out_path, events_path = Path(tmp) / "result.jsonl", Path(tmp) / "events.jsonl"
            with out_path.open("wb") as out, events_path.open("wb") as events:
                scored = self.score_local(local, out, source, deadline, events_out=events)
            t2 = time.monotonic()
            # The JSONL and events land first, then the summary: a summary always points at complete results.
            store.upload_file(out_path, bucket, keys.jsonl, content_type="application/x-ndjson")
            if scored.windows is not None:
                store.upload_file(events_path, bucket, keys.events, content_type="application/x-ndjson")
            else:
                store.delete(bucket, keys.events)  # from an earlier version of the object that held recordings
            summary: dict[str, Any] = {
                "source": source,
                "etag": info.etag,
                "size": info.size,
                "model": self.model,
                "clips": scored.clips,
                "classes": len(self.classes),
                **made_with(self.options),
                "result": f"{bucket}/{keys.jsonl}",
                **_recording_fields(scored, f"{bucket}/{keys.events}"),
                "metrics": scored.metrics,
                "per_class_ap": scored.per_class_ap,
                "top_labels": scored.top_labels,
                "notes": scored.notes,
                "attempt": attempt,
                "job": job,
                "worker": socket.gethostname(),
                "created": now(),
                "timings": {
                    "download_seconds": round(t1 - t0, 4),
                    "score_seconds": round(t2 - t1, 4),
                    "upload_seconds": round(time.monotonic() - t2, 4),
                },
            }
            summary["timings"]["total_seconds"] = round(time.monotonic() - t0, 4)
            store.put_bytes(dumps(summary), bucket, keys.summary, content_type="application/json")
            store.delete(bucket, keys.error)
        log.info(
            "scored %s: %d clips in %.2fs -> %s/%s", source, scored.clips, time.monotonic() - t0, bucket, keys.jsonl
        )
        return Outcome(source, "scored", clips=scored.clips, result=keys.jsonl)

    def record_failure(
        self, url: ObjectURL, error: BaseException, *, attempts: int, etag: str | None, job: str | None
    ) -> None:
        """Write ``<key>.error.json`` in place of results; never raises for a storage failure."""
        record_failure(self.settings, url, error, attempts=attempts, etag=etag, model=self.model, job=job)


def _recording_fields(scored: FileScore, events: str) -> dict[str, Any]:
    """A recording's summary also counts its windows and events and says where the events are."""
    if scored.windows is None:
        return {}
    return {
        "windows": scored.windows,
        "events": scored.events,
        "events_result": events,
        "seconds_per_frame": scored.seconds_per_frame,
        "event_edges": scored.event_edges,
    }
