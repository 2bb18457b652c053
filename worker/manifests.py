"""The one writer of job manifests (``audioset_batch/results/job_manifest.py``): a thread of each worker process
(pool child), of which one at a time (a claim in the job store) rewrites the manifest of every job changed since.

Not in the worker's main process: it forks a new child when one dies, and a fork while this thread holds a lock
(an HTTP connection pool's, logging's) would leave the new child stuck on it."""

from __future__ import annotations

import logging
import threading

import orjson

from audioset_batch.jobs.factory import open_job_store
from audioset_batch.jobs.job_store import JobStore
from audioset_batch.results.job_manifest import job_manifest, manifest_key
from audioset_batch.settings import Settings
from audioset_batch.storage.factory import store_for
from model.artifact import read_manifest

log = logging.getLogger("audioset.worker")
CLAIM = "manifest-writer"


class ManifestWriter(threading.Thread):
    def __init__(self, settings: Settings) -> None:
        super().__init__(name="manifests", daemon=True)
        self.settings = settings
        self.interval = settings.manifest_interval
        self.stopping = threading.Event()
        self._jobs: JobStore | None = None
        self.model = read_manifest(settings.model_path).tag

    def run(self) -> None:
        while not self.stopping.wait(self.interval):
            self.tick()

    def stop(self) -> None:
        """Stop, after writing what changed since the last round (a job that just ended gets its final manifest)."""
        self.stopping.set()
        self.join(timeout=self.interval + 30)
        self.tick(final=True)

    def tick(self, final: bool = False) -> int:
        """Write the manifest of each job changed since the last round; returns how many were written."""
        try:
            jobs = self._jobs = self._jobs or open_job_store(self.settings.effective_state_url)
            if not final and not jobs.claim(CLAIM, self.interval * 0.9):
                return 0  # another worker writes this round
            changed = jobs.take_changed()
        except Exception as exc:  # the job store is restarting: the next round catches up
            log.debug("manifests skipped this round (%s: %s)", type(exc).__name__, exc)
            return 0
        written = 0
        for job in changed:
            try:
                self.write(jobs, job)
                written += 1
            except Exception as exc:
                log.warning("could not write the manifest of job %s (%s: %s); next round", job, type(exc).__name__, exc)
                jobs.note_changed(job)
        return written

    def write(self, jobs: JobStore, job: str) -> None:
        settings = self.settings
        data = orjson.dumps(job_manifest(jobs, job, self.model, settings.results_prefix))
        store = store_for(settings.store_scheme, settings)
        key = manifest_key(settings.results_prefix, job)
        store.put_bytes(data, settings.results_bucket, key, content_type="application/json")


_running: list[ManifestWriter] = []


def start(settings: Settings) -> None:
    """Start the writer in this (child) process, once; ``AUDIOSET_MANIFEST_INTERVAL=0`` writes none."""
    if _running or settings.manifest_interval <= 0:
        return
    writer = ManifestWriter(settings)
    writer.start()
    _running.append(writer)


def stop() -> None:
    while _running:
        _running.pop().stop()
