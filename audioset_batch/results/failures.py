"""The error record that stands in for a file's results when it cannot be scored."""

from __future__ import annotations

import logging

from audioset_batch.errors import AudiosetError
from audioset_batch.results.keys import result_keys
from audioset_batch.results.records import dumps, error_record
from audioset_batch.settings import Settings
from audioset_batch.storage.factory import store_for
from audioset_batch.storage.object_store import ObjectURL

log = logging.getLogger("audioset.pipeline")


def record_failure(
    settings: Settings,
    url: ObjectURL,
    error: BaseException,
    *,
    attempts: int,
    etag: str | None,
    model: str,
    job: str | None,
) -> None:
    """Write ``<key>.error.json`` in place of results and remove stale results; never raises.

    A module function, so the worker's main process can end a file whose child it killed.
    """
    source = f"{url.bucket}/{url.key}"
    log.error("failed %s: %s: %s (attempt %d)", source, type(error).__name__, error, attempts)
    try:
        keys = result_keys(url.bucket, url.key, settings.results_prefix)
    except AudiosetError:
        return  # an invalid key has no safe place for an error record; the job store still counts it
    record = error_record(source=source, error=error, attempts=attempts, etag=etag, model=model, job=job)
    try:
        results = store_for(url.scheme, settings)
        results.put_bytes(dumps(record), settings.results_bucket, keys.error, content_type="application/json")
        for stale in (keys.summary, keys.jsonl, keys.events):
            results.delete(settings.results_bucket, stale)
    except Exception as exc:  # the caller still marks the item failed: never let this path raise
        log.error("could not write error record for %s: %s: %s", source, type(exc).__name__, exc)
