"""Per-process worker state: the loaded model, the scorer and the job store.

TensorFlow is not fork-safe, so nothing here runs in the Celery parent: the
model loads in each child on ``worker_process_init`` (or lazily on first use
with the solo/threads pools). With a compiled form, the child never imports
TensorFlow at all.
"""

from __future__ import annotations

import logging
import threading
import time

from audioset_batch.jobs.factory import open_job_store
from audioset_batch.jobs.job_store import JobStore
from audioset_batch.scoring.pipeline import ObjectScorer
from audioset_batch.settings import Settings, get_settings

log = logging.getLogger("audioset.worker")
_lock = threading.Lock()
_scorer: ObjectScorer | None = None
_jobs: JobStore | None = None


def load_scorer(settings: Settings | None = None) -> ObjectScorer:
    """Load the model once per process; later calls return the same scorer."""
    global _scorer
    with _lock:
        if _scorer is None:
            settings = settings or get_settings()
            started = time.monotonic()
            _scorer = ObjectScorer.from_settings(settings, worker=True)
            log.info(
                "model %s loaded from %s (%d classes, %s, %d threads) in %.2f s",
                _scorer.model,
                settings.model_path,
                len(_scorer.classes),
                _scorer.runtime,
                settings.effective_tf_threads,
                time.monotonic() - started,
            )
        return _scorer


def reset_scorer() -> None:
    """Forget the loaded model after an unexpected error, so the next file gets a freshly loaded one:
    whatever state a failure left in the predictor never reaches another file."""
    global _scorer
    with _lock:
        _scorer = None


def job_store() -> JobStore:
    global _jobs
    if _jobs is None:
        _jobs = open_job_store(get_settings().effective_state_url)
    return _jobs
