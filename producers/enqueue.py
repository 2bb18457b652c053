"""``audioset enqueue``: expand URLs to HDF5 objects, register them in a job, send one task each."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from celery import Celery

from audioset_batch.errors import ObjectNotFoundError
from audioset_batch.jobs import JobStore
from audioset_batch.object_store import ObjectInfo, ObjectURL, check_bucket_allowed, check_source, store_for
from audioset_batch.results import is_hdf5_key, is_result_key
from audioset_batch.settings import Settings
from audioset_batch.task_names import SCORE_TASK

log = logging.getLogger("audioset.producer")
BATCH = 500


@dataclass(frozen=True, slots=True)
class Enqueued:
    job: str
    objects: int
    sent: int


def expand(url: str, settings: Settings) -> Iterator[ObjectURL]:
    """An object URL yields itself; a prefix yields every ``.h5``/``.hdf5`` object under it.

    Result objects are never picked up, even when input and results share a bucket.
    """
    parsed = ObjectURL.parse(url, settings.input_bucket)
    check_bucket_allowed(parsed.bucket, settings.allowed_sources)
    store = store_for(parsed.scheme, settings)
    if parsed.key and is_hdf5_key(parsed.key):
        try:
            store.stat(parsed.bucket, parsed.key)
            yield parsed
            return
        except ObjectNotFoundError:
            pass  # maybe a prefix that happens to end in .h5; list it below
    for info in list_inputs(parsed, settings):
        yield parsed.with_key(info.key)


def list_inputs(prefix: ObjectURL, settings: Settings) -> Iterator[ObjectInfo]:
    """Every ``.h5``/``.hdf5`` object under the prefix, in key order, leaving out result objects."""
    for info in store_for(prefix.scheme, settings).list(prefix.bucket, prefix.key):
        if is_hdf5_key(info.key) and not is_result_key(
            prefix.bucket, info.key, settings.results_bucket, settings.results_prefix
        ):
            yield info


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
                    kwargs={"job": job, "item": item, "force": force},
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
    job = jobs.create_job(name=job_name)
    objects = [u for url in urls for u in expand(url, settings)]
    sent = send(app, jobs, job, objects, settings, force=force)
    jobs.incr_counter("enqueued", sent)
    log.info("job %s: %d objects, %d tasks sent", job, len(objects), sent)
    return Enqueued(job=job, objects=len(objects), sent=sent)
