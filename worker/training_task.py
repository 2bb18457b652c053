"""The training task, registered only in workers that consume the ``training`` queue.

A scoring worker is sized, limited and secured for scoring: it does not even know this task, so a training
message that reaches it (sent to the wrong queue, or forged) is refused by Celery as unregistered.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Task, shared_task

from audioset_batch.settings import get_settings
from worker.config import TRAIN_TASK, TRAINING_QUEUE
from worker.runtime import job_store

log = logging.getLogger("audioset.worker")
TRAINING_TIME_LIMIT = 14 * 24 * 3600


# Acked on receipt, unlike scoring: a multi-hour run must not be redelivered to a second worker when
# the Redis visibility timeout passes. A lost run is resumed from its checkpoint by resubmitting.
@shared_task(
    bind=True,
    name=TRAIN_TASK,
    acks_late=False,
    soft_time_limit=TRAINING_TIME_LIMIT,
    time_limit=TRAINING_TIME_LIMIT + 60,
)
def train_model(self: Task, run_id: str, spec: dict[str, Any]) -> dict[str, Any]:
    from audioset_batch.training.runs import execute

    lane = (self.request.delivery_info or {}).get("routing_key")
    if lane != TRAINING_QUEUE:  # a second lock behind registration: a message that names no queue is refused too
        log.error(
            "refused training run %r delivered on queue %r; training runs only on %r", run_id, lane, TRAINING_QUEUE
        )
        return {"id": run_id, "status": "refused", "error": f"training tasks run only on the {TRAINING_QUEUE!r} queue"}
    record = execute(run_id, spec, get_settings(), job_store())
    return {"id": run_id, "status": record["status"], "artifact": record.get("artifact")}
