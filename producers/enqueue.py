"""``audioset enqueue``: expand URLs to HDF5 objects, register them in a job, send one task each."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass

from celery import Celery

from audioset_batch.errors import LocationError
from audioset_batch.jobs.job_store import FINAL_STATUSES, ItemEnd, JobStore, item_url
from audioset_batch.settings import Settings
from audioset_batch.storage.locations import object_inputs, queue_url
from audioset_batch.storage.object_store import ObjectURL, check_source
from audioset_batch.task_messages import ScoreMessage
from audioset_batch.task_names import SCORE_TASK

log = logging.getLogger("audioset.producer")
BATCH = 500


@dataclass(frozen=True, slots=True)
class Enqueued:
    job: str
    objects: int
    sent: int


def expand(text: str, settings: Settings) -> list[ObjectURL]:
    """The HDF5 objects an argument names (see :mod:`audioset_batch.storage.locations`); none is an error."""
    objects = list(object_inputs(queue_url(text, settings), settings))
    if not objects:
        raise LocationError(f"{text}: no .h5 or .hdf5 file there; nothing was enqueued")
    return objects


def send(
    app: Celery,
    jobs: JobStore,
    job: str,
    urls: Iterable[ObjectURL | tuple[ObjectURL, str]],
    settings: Settings,
    force: bool = False,
) -> int:
    """Register each object in the job, then send a task for each one the job did not hold yet.

    An item is the object URL, or ``(url, item_id)`` where the caller needs another identity
    (the watcher adds the ETag so an overwritten object is scored again). If the broker
    refuses a task, the items not sent are removed from the job again before the error
    propagates, so calling again (a retry) sends them.
    """
    sent = 0
    batch: dict[str, str] = {}

    def flush() -> int:
        added = jobs.add_items(job, list(batch))
        for i, item in enumerate(added):
            try:
                app.send_task(
                    SCORE_TASK,
                    args=[batch[item]],
                    kwargs=ScoreMessage(url=batch[item], job=job, item=item, force=force).kwargs(),
                    queue=settings.queue,
                )
            except BaseException:
                # Not sent: unregister what was not sent, so a retry finds it new instead of
                # leaving a 'pending' item that no task will ever finish.
                jobs.forget_items(job, added[i:])
                raise
        batch.clear()
        return len(added)

    for entry in urls:
        url, item = (entry, str(entry)) if isinstance(entry, ObjectURL) else (entry[0], entry[1])
        check_source(url, settings.allowed_sources)
        batch[item] = str(url)
        if len(batch) >= BATCH:
            sent += flush()
    if batch:
        sent += flush()
    return sent


def enqueue(
    app: Celery, jobs: JobStore, urls: list[str], settings: Settings, job_name: str | None = None, force: bool = False
) -> Enqueued:
    objects = [u for url in urls for u in expand(url, settings)]  # before the job: no empty job on a typo
    job = jobs.create_job(name=job_name, queue=settings.queue, force=force)
    sent = send(app, jobs, job, objects, settings, force=force)
    jobs.incr_counter("enqueued", sent)
    log.info("job %s: %d objects, %d tasks sent", job, len(objects), sent)
    return Enqueued(job=job, objects=len(objects), sent=sent)


def resend(app: Celery, jobs: JobStore, job: str, settings: Settings, everything: bool = False) -> int:
    """``jobs retry``: the job's failed items (with ``everything``, all its ended items, scored anew as ``--force``
    does) go back to pending with a new generation, and each one's task is sent again; an item whose task cannot
    be sent ends failed again, saying why (never pending with no task). Returns how many were sent."""
    statuses, force = (FINAL_STATUSES, True) if everything else (("failed",), False)
    urls = {item: item_url(item, end) for item, end in jobs.ends(job).items()}
    sent = 0
    for item, generation in jobs.retry(job, statuses).items():
        url = urls.get(item) or item_url(item)
        try:
            parsed = check_source(ObjectURL.parse(url), settings.allowed_sources)
            message = ScoreMessage(url=str(parsed), job=job, item=item, force=force, generation=generation)
            app.send_task(SCORE_TASK, args=[message.url], kwargs=message.kwargs(), queue=settings.queue)
            sent += 1
        except Exception as exc:
            log.error("job %s: could not send %s again: %s: %s", job, item, type(exc).__name__, exc)
            why = ItemEnd(error=type(exc).__name__, message=f"could not be sent again: {exc}", url=url)
            jobs.mark(job, item, "failed", why, generation)
    if sent:
        jobs.incr_counter("retried", sent)
    return sent
