"""``audioset watch``: poll a bucket prefix and enqueue every new or changed HDF5 object once.

Each object version is a job item ``<url>#<etag>`` in the job store (Redis by default),
so a restarted watcher skips what it already sent, and an overwrite (new ETag) is
scored again. Listing is paginated; 100k objects cost one LIST page per 1000.

Every ``sweep_every`` polls, finished items whose object version is no longer listed
(deleted, or overwritten) are dropped from the job, so a long-running watcher over a
drop-zone bucket holds one item per object present, not one per object ever seen.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Iterator

from celery import Celery

from audioset_batch.jobs.job_store import JobStore
from audioset_batch.settings import Settings
from audioset_batch.storage.locations import list_inputs, queue_url
from audioset_batch.storage.object_store import ObjectURL
from producers.enqueue import send

log = logging.getLogger("audioset.watcher")
SWEEP_EVERY = 60  # polls between sweeps: 5 min at the default 5 s interval


def watch_job_id(url: ObjectURL) -> str:
    """A stable job id per watched prefix, so restarts continue the same job."""
    return "watch-" + hashlib.sha1(str(url).encode(), usedforsecurity=False).hexdigest()[:12]


class Watcher:
    def __init__(self, url: str, settings: Settings, app: Celery, jobs: JobStore) -> None:
        self.url = queue_url(url, settings)
        self.settings = settings
        self.app = app
        self.jobs = jobs
        self.job = jobs.create_job(name=f"watch {self.url}", job_id=watch_job_id(self.url), queue=settings.queue)
        self._known: set[str] = set()  # items this process already registered: saves round trips
        self.sweep_every = SWEEP_EVERY
        self._polls = 0

    def _candidates(self, fresh: list[str], listed: set[str]) -> Iterator[tuple[ObjectURL, str]]:
        for info in list_inputs(self.url, self.settings):
            obj = self.url.with_key(info.key)
            item = f"{obj}#{info.etag}"
            listed.add(item)
            if item not in self._known:
                self._known.add(item)
                fresh.append(item)
                yield obj, item

    def poll_once(self) -> int:
        """List once; returns how many tasks were sent."""
        fresh: list[str] = []
        listed: set[str] = set()
        try:
            sent = send(self.app, self.jobs, self.job, self._candidates(fresh, listed), self.settings)
        except BaseException:
            self._known.difference_update(fresh)  # not all sent: offer them again next poll (the job dedupes)
            raise
        if sent:
            self.jobs.incr_counter("watcher.enqueued", sent)
            log.info("watch %s: enqueued %d new object(s) into job %s", self.url, sent, self.job)
        if self._polls % self.sweep_every == 0:
            self.sweep(listed)
        self._polls += 1
        return sent

    def sweep(self, listed: set[str]) -> int:
        """Drop finished items not in ``listed`` (a complete listing); returns how many."""
        self._known &= listed
        held = self.jobs.items(self.job)
        gone = [item for item, status in held.items() if item not in listed and status != "pending"]
        dropped = self.jobs.drop_finished_items(self.job, gone) if gone else 0
        if dropped:
            log.info("watch %s: dropped %d finished item(s) whose object version is gone", self.url, dropped)
        return dropped

    def run(self, stop: threading.Event, interval: float | None = None) -> None:
        """Poll until ``stop`` is set; storage errors are logged and retried next round."""
        interval = interval or self.settings.watch_interval
        log.info("watching %s every %.1fs (job %s)", self.url, interval, self.job)
        while not stop.is_set():
            try:
                self.poll_once()
            except Exception as exc:
                log.warning("watch %s: listing failed, will retry: %s: %s", self.url, type(exc).__name__, exc)
            stop.wait(interval)
