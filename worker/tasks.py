"""The scoring task: a thin shell around :class:`ObjectScorer` that adds retries and job bookkeeping."""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from celery import Task, shared_task
from celery.exceptions import Reject, Retry, SoftTimeLimitExceeded, TimeLimitExceeded
from celery.signals import (
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutdown,
    worker_shutting_down,
)

from audioset_batch.errors import (
    AttemptsExhaustedError,
    AudiosetError,
    ConfigError,
    FileFailedError,
    LimitExceededError,
    TransientStorageError,
)
from audioset_batch.jobs.job_store import ItemEnd
from audioset_batch.logs import log_context
from audioset_batch.results.failures import record_failure
from audioset_batch.retry_policy import backoff_delay, call_for_up_to
from audioset_batch.scoring.hdf5_reader import pin_external_prefixes
from audioset_batch.scoring.limits import output_options, soft_time_limit_error
from audioset_batch.scoring.pipeline import ObjectScorer
from audioset_batch.settings import Settings, get_settings
from audioset_batch.storage.locations import message_url
from audioset_batch.storage.object_store import ObjectURL, check_source
from audioset_batch.task_messages import MalformedMessageError, ScoreMessage
from model.artifact import check_artifact, read_manifest
from model.artifact_errors import ArtifactError
from worker import manifests, redelivery
from worker import prometheus_metrics as metrics
from worker.config import SCORE_TASK
from worker.runtime import job_store, load_scorer, reset_scorer

log = logging.getLogger("audioset.worker")


@worker_init.connect
def _check_model_before_forking(**_: Any) -> None:
    """A worker whose model cannot load must not say ready and take tasks it will never finish.

    The parent cannot load TensorFlow (not fork-safe), but it can check the artifact — manifest,
    sha256s, archive, compiled forms — without it, which covers a wrong path, a modified or hostile file.
    """
    settings = get_settings()
    try:
        manifest = check_artifact(settings.model_path)
    except Exception as exc:  # Celery logs and ignores an exception from a signal handler: exit here instead
        reason = str(exc) if isinstance(exc, ArtifactError) else f"{type(exc).__name__}: {exc}"
        log.critical("cannot start: the model at AUDIOSET_MODEL_PATH=%s is unusable: %s", settings.model_path, reason)
        raise SystemExit(1) from None
    try:  # settings that cannot work with this model (a hop longer than its window, labels by missing thresholds)
        output_options(settings, thresholds=manifest.threshold_values, frames=manifest.frames)
    except ConfigError as exc:
        log.critical("cannot start: %s", exc)
        raise SystemExit(1) from None


_controller: list[Any] = []  # the WorkController of this (parent) process, for its exit code


@worker_init.connect
def _remember_controller(sender: Any = None, **_: Any) -> None:
    _controller[:] = [sender]


@worker_shutting_down.connect
def _keep_a_failing_exit_code(exitcode: int | None = None, how: str = "", **_: Any) -> None:
    """A cold shutdown (SIGQUIT, sent by a child whose model failed to load) means exit 1; Celery's own
    WorkController drops that code on the cold path and exits 0, which a supervisor reads as a clean stop."""
    if how == "Cold" and exitcode and _controller and _controller[0] is not None:
        _controller[0].exitcode = exitcode


@worker_process_init.connect
def _load_model_in_child(**_: Any) -> None:
    pin_external_prefixes()
    try:
        scorer = load_scorer()
    except Exception as exc:
        # Stop the whole worker: a child without a model would take tasks and never finish them. SIGQUIT is
        # Celery's cold shutdown, which exits 1 (SIGTERM's warm shutdown exits 0, as if all were well).
        log.critical(
            "cannot start: the model failed to load in a worker process (%s: %s); stopping the worker",
            type(exc).__name__,
            exc,
        )
        os.kill(os.getppid(), signal.SIGQUIT)
        os._exit(1)
    if metrics.enabled():
        metrics.metrics().model.labels(scorer.model).set(1)
    # In the child, never in the parent: the parent forks a new child when one dies, and a fork while a thread
    # holds a lock (an HTTP pool's, logging's) leaves the new child stuck on it.
    manifests.start(get_settings())


@worker_init.connect
def _serve_metrics(**_: Any) -> None:
    settings = get_settings()
    if settings.metrics_port and metrics.enabled():
        metrics.serve(settings)


@worker_ready.connect
def _start_redelivery(sender: Any = None, **_: Any) -> None:
    """In the main process, once consuming: the heartbeat that lets a message whose holder is gone come back in
    seconds, not after the visibility timeout (``worker/redelivery.py``)."""
    if sender is not None:
        settings = get_settings()
        consumed = {queue.name for queue in getattr(getattr(sender, "task_consumer", None), "queues", None) or ()}
        scoring = settings.queue if settings.queue in consumed else None  # a training-only worker sends nothing
        redelivery.start(sender.app, sender.hostname, settings.redelivery_grace, scoring, settings.effective_state_url)


@worker_shutdown.connect
def _stop_redelivery(**_: Any) -> None:
    redelivery.stop()


@worker_process_shutdown.connect
def _forget_child(pid: int | None = None, **_: Any) -> None:
    manifests.stop()  # this child's writer, after a last round (a no-op where it never started)
    if pid:
        metrics.process_died(pid)


T = TypeVar("T")
STATE_RETRY_SECONDS = 120.0


def with_state_retry(what: str, call: Callable[[], T]) -> T:
    """Job-store calls outlive a short Redis restart: giving up would fail the task after its result was
    written, and the job would never count it."""
    return call_for_up_to(STATE_RETRY_SECONDS, what, call, log)


@dataclass(frozen=True, slots=True)
class JobItem:
    """The job item a message stands for, and the generation it was sent in (raised by `jobs retry`)."""

    job: str | None
    item: str
    generation: int = 0


def _finish(ref: JobItem, status: str, end: ItemEnd) -> None:
    if ref.job:
        job = ref.job
        with_state_retry(f"marking {ref.item}", lambda: job_store().mark(job, ref.item, status, end, ref.generation))


def _failure(error: BaseException, url: str) -> ItemEnd:
    return ItemEnd(error=type(error).__name__, message=str(error), url=url)


def _failed(
    scorer: ObjectScorer, parsed: ObjectURL, error: BaseException, attempt: int, ref: JobItem
) -> dict[str, Any]:
    scorer.record_failure(parsed, error, attempts=attempt, etag=None, job=ref.job)
    _finish(ref, "failed", _failure(error, str(parsed)))
    if metrics.enabled():
        metrics.record_file("failed", 0, 0.0, type(error).__name__)
    return {"source": str(parsed), "status": "failed", "error": type(error).__name__}


def _retry_or_fail(
    task: Task,
    scorer: ObjectScorer,
    parsed: ObjectURL,
    error: TransientStorageError,
    delay: float,
    attempt: int,
    max_attempts: int,
    ref: JobItem,
) -> dict[str, Any]:
    """Send the file round again, or end it with a record if that cannot happen.

    Celery's own cap is set from ``AUDIOSET_MAX_ATTEMPTS`` (``max_retries=None`` means the task's default of 3,
    which once left files pending for ever), and a retry Celery refuses or cannot publish (the broker is down)
    ends the file here: without this, the message is acked or rejected and the file is never finished.
    """
    try:
        raise task.retry(exc=error, countdown=delay, max_retries=max_attempts)
    except Retry:
        raise
    except Reject as exc:
        reason: BaseException = TransientStorageError(f"{error} (and the retry could not be queued: {exc.reason})")
    except Exception as exc:  # Celery refused the retry: it re-raises the error itself
        reason = exc
    log.error("cannot retry %s on attempt %d; ending it with an error record", parsed, attempt)
    return _failed(scorer, parsed, reason, attempt, ref)


class ScoringTask(Task):  # type: ignore[misc]
    """Ends a file killed at the hard time limit like any other failure: an error record and a failed item.

    Celery calls ``on_failure`` in the worker's main process when it kills a child at the hard limit; the
    child never got to write anything, so this is the only place that can.
    """

    def on_failure(self, exc: BaseException, task_id: str, args: Any, kwargs: Any, einfo: Any) -> None:
        if isinstance(exc, TimeLimitExceeded):
            hard_time_limit_reached(list(args or []), dict(kwargs or {}))


def hard_time_limit_reached(args: list[Any], kwargs: dict[str, Any]) -> None:
    settings = get_settings()
    url = str(args[0]) if args else str(kwargs.get("url", ""))
    job = kwargs.get("job")
    ref = JobItem(job, kwargs.get("item") or url, kwargs.get("generation") or 0)
    error = LimitExceededError(
        f"the worker process was killed at AUDIOSET_TIME_LIMIT={settings.time_limit}s (the hard limit); "
        f"the file did not finish within AUDIOSET_SOFT_TIME_LIMIT={settings.soft_time_limit}s either"
    )
    try:
        parsed = check_source(message_url(url, settings), settings.allowed_sources)
        record_failure(
            settings, parsed, error, attempts=1, etag=None, model=read_manifest(settings.model_path).tag, job=job
        )
    except Exception as exc:
        log.error("could not write the error record for %s after the hard time limit: %s", url, exc)
    _finish(ref, "failed", _failure(error, url))


# ``throws``: a failed file is an expected outcome: Celery logs it in one line, without a traceback.
@shared_task(bind=True, name=SCORE_TASK, base=ScoringTask, throws=(FileFailedError,))
def score_object(self: Task, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """``score_object(url, job=…, item=…, force=…, v=1)``; the arguments are checked against
    :class:`ScoreMessage` before anything else, since anyone with the broker's password can write a message."""
    try:
        message = ScoreMessage.parse(args, kwargs)
    except MalformedMessageError as exc:
        log.error("refused a malformed scoring message (task %s): %s", self.request.id, exc)
        return {"status": "refused", "error": type(exc).__name__, "message": str(exc)}
    settings = get_settings()
    url, job, force = message.url, message.job, message.force
    ref = JobItem(job, message.item or url, message.generation)
    attempt = with_state_retry("counting deliveries", lambda: job_store().count_delivery(self.request.id or url))
    token = log_context.set({"job": job, "source": url, "attempt": attempt, "task_id": self.request.id})
    try:
        result = _score(self, settings, url, ref, force, attempt)
    finally:
        log_context.reset(token)
    if result["status"] == "failed":  # everything is recorded; now let Celery and Flower count it as failed
        raise FileFailedError(f"{result['source']}: {result.get('error')} (see its .error.json)")
    return result


def _not_to_score(ref: JobItem) -> str:
    """Why a message is not to be scored, or "": its item was cancelled, or it was sent again since (the job
    store is asked, not the worker's memory: Celery's revokes are lost when a worker restarts)."""
    job = ref.job or ""
    status, generation = with_state_retry(f"reading {ref.item}", lambda: job_store().item_state(job, ref.item))
    if status == "cancelled":
        return f"job {job} was cancelled"
    if generation != ref.generation:
        return f"it was sent again since (generation {generation}; this message is {ref.generation})"
    return ""


def _score(self: Task, settings: Settings, url: str, ref: JobItem, force: bool, attempt: int) -> dict[str, Any]:
    if ref.job and (why := _not_to_score(ref)):
        log.info("not scoring %s: %s", url, why)
        return {"source": url, "status": "not-scored", "message": why}
    try:
        # Refused here, not only by producers: a task pushed straight into the queue must stay inside the allow-list.
        # No error record: its key could be a real file's result key in another bucket.
        parsed = check_source(message_url(url, settings), settings.allowed_sources)
    except AudiosetError as exc:
        log.error("rejected task for %r: %s", url, exc)
        _finish(ref, "failed", _failure(exc, url))
        return {"source": url, "status": "failed", "error": type(exc).__name__}
    try:
        scorer = load_scorer()
    except Exception as exc:  # only where the model loads lazily (solo/threads pools): still end the file
        log.exception("cannot score %s: the model failed to load", url)
        record_failure(settings, parsed, exc, attempts=attempt, etag=None, model=str(settings.model_path), job=ref.job)
        _finish(ref, "failed", _failure(exc, str(parsed)))
        return {"source": str(parsed), "status": "failed", "error": type(exc).__name__}
    if attempt > settings.max_attempts:
        exhausted = AttemptsExhaustedError(
            f"delivered {attempt} times, over AUDIOSET_MAX_ATTEMPTS={settings.max_attempts}; "
            "the worker handling it was lost each time"
        )
        return _failed(scorer, parsed, exhausted, attempt, ref)
    started = time.monotonic()
    try:
        outcome = scorer.score(parsed, force=force, attempt=attempt, job=ref.job)
    except TransientStorageError as exc:  # the scorer let it through: should_retry() said retry
        delay = backoff_delay(attempt, settings.retry_backoff, settings.retry_backoff_max)
        log.warning(
            "transient error on %s (attempt %d/%d), retrying in %.1fs: %s",
            url,
            attempt,
            settings.max_attempts,
            delay,
            exc,
        )
        return _retry_or_fail(self, scorer, parsed, exc, delay, attempt, settings.max_attempts, ref)
    except SoftTimeLimitExceeded:
        return _failed(scorer, parsed, soft_time_limit_error(settings.soft_time_limit), attempt, ref)
    except Exception as exc:
        log.exception("unexpected error scoring %s", url)
        reset_scorer()  # the next file starts from a freshly loaded model
        return _failed(scorer, parsed, exc, attempt, ref)
    end = ItemEnd(outcome.error, outcome.message, outcome.clips, time.monotonic() - started, str(parsed))
    _finish(ref, outcome.status, end)
    if metrics.enabled():
        metrics.record_file(outcome.status, outcome.clips, time.monotonic() - started, outcome.error)
    return {"source": outcome.source, "status": outcome.status, "clips": outcome.clips, "error": outcome.error}
