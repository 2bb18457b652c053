"""Prompt redelivery of messages whose holder is gone, instead of after the visibility timeout.

kombu's Redis transport keeps every delivered, unacknowledged message in the ``unacked`` hash and puts it back on
its queue only once it is older than the visibility timeout, which must exceed the hard time limit (an hour and
more here). That is right for a message a live worker is still scoring, and an hour too long for one nobody
holds any more: a message a worker had prefetched when Redis restarted (Celery drops prefetched messages on a
lost connection, expecting the broker to redeliver them), or one held by a worker killed with ``kill -9``.

So each worker's main process writes, every :data:`HEARTBEAT_SECONDS`, the delivery tags it holds (prefetched and
running) under ``audioset:held:<node>`` with a short expiry, and one worker at a time puts back every unacked
message that is older than the grace period (``AUDIOSET_REDELIVERY_GRACE``, 30 s) and held by no live worker. A
message a live worker holds is never put back, so a file is never scored twice because of this. Workers that do
not write heartbeats (an older release) are not seen: do not mix releases on one queue. Each tick also puts back
the messages Redis lost while delivering them to this process (:func:`~worker.guarded_transports.put_back_undelivered`).

And a message Redis loses whole: stopped in the instant after it handed one to a consumer (``BRPOP``, written to
its append-only file) and before the reply left, Redis keeps it nowhere, and its file stayed pending for ever (the
stress runs caught it, 1 restart in about 30). So when this worker's queue has been empty, with nothing of it
unacknowledged, for the grace period, the files its jobs still hold as pending have no message anywhere: they get
a new generation and are sent again. The generation makes it safe when one did exist after all (a producer still
sending, say): the earlier message is then not scored, so every file is scored once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from typing import Any

from audioset_batch.jobs.factory import open_job_store
from audioset_batch.jobs.job_store import JobStatus, JobStore, item_url
from audioset_batch.task_messages import ScoreMessage
from audioset_batch.task_names import SCORE_TASK
from worker.guarded_transports import put_back_undelivered
from worker.prometheus_metrics import record_redelivered

log = logging.getLogger("audioset.worker")

HEARTBEAT_SECONDS = 5.0
#: A worker whose heartbeat is older than this is gone, and so is its hold on its messages.
HOLDER_TTL_SECONDS = 20
HELD_PREFIX = "audioset:held:"
REAPER_LOCK = "audioset:redelivery-lock"


def held_tags() -> list[str]:
    """Delivery tags of the messages this worker holds: prefetched (reserved) and running (active)."""
    from celery.worker import state

    for _ in range(5):  # the consumer thread may change the sets while they are copied
        try:
            requests = [*state.active_requests, *state.reserved_requests]
            break
        except RuntimeError:
            continue
    else:
        requests = []
    tags = {getattr(getattr(request, "message", None), "delivery_tag", None) for request in requests}
    return sorted(tag for tag in tags if isinstance(tag, str))


def orphans(unacked: list[tuple[str, float]], holders: list[dict[str, Any]], now: float, grace: float) -> list[str]:
    """The delivery tags to put back: older than ``grace`` and held by none of the live ``holders``.

    A tag delivered after a holder last reported is left for a later round (that holder may have it).
    """
    held = {tag for holder in holders for tag in holder.get("tags", [])}
    reported = min((float(holder.get("at", 0)) for holder in holders), default=now)
    return [tag for tag, at in unacked if now - at > grace and tag not in held and at < reported]


class Redelivery(threading.Thread):
    """The heartbeat and the sweep, on a thread of the worker's main process."""

    def __init__(self, app: Any, node: str, grace: float, queue: str | None = None, state_url: str = "") -> None:
        super().__init__(name="redelivery", daemon=True)
        self.app = app
        self.node = node
        #: A delivery younger than this is never put back: its holder may not have said so yet.
        self.grace = grace
        #: The scoring queue this worker consumes, whose jobs' lost messages it sends again (None: it does not).
        self.queue = queue
        self.state_url = state_url
        self.stopping = threading.Event()
        self._connection: Any = None
        self._jobs: JobStore | None = None
        self._idle_since: float | None = None

    def run(self) -> None:
        while not self.stopping.wait(HEARTBEAT_SECONDS):
            try:
                self.tick()
            except Exception as exc:  # Redis restarting: the next tick reconnects
                log.debug("redelivery heartbeat skipped (%s: %s)", type(exc).__name__, exc)
                self._drop_connection()

    def stop(self) -> None:
        self.stopping.set()
        self._drop_connection()

    def _channel(self) -> Any:
        if self._connection is None:
            self._connection = self.app.connection_for_write()
        return self._connection.default_channel

    def _drop_connection(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(Exception):
                self._connection.release()
            self._connection = None

    def tick(self) -> None:
        channel = self._channel()
        client = channel.client
        record_redelivered("lost_in_delivery", put_back_undelivered(channel))  # this process's, first
        now = time.time()
        mine = f"{HELD_PREFIX}{self.node}:{os.getpid()}"  # two workers given one node name still count apart
        client.set(mine, json.dumps({"at": now, "tags": held_tags()}), ex=HOLDER_TTL_SECONDS)
        idle = self.queue is not None and queue_idle(channel, self.queue)
        self._idle_since = (self._idle_since or now) if idle else None
        if not client.set(REAPER_LOCK, self.node, nx=True, ex=max(1, int(HEARTBEAT_SECONDS))):
            return  # another worker sweeps this round
        self.sweep(channel, now)
        if self._idle_since is not None and now - self._idle_since >= self.grace:
            self._idle_since = now  # at most once a grace period while the queue stays idle
            self.send_lost_again()

    def sweep(self, channel: Any, now: float) -> None:
        """Put back the unacknowledged messages older than the grace period that no live worker holds."""
        client = channel.client
        unacked = [
            (tag.decode() if isinstance(tag, bytes) else str(tag), float(at))
            for tag, at in client.zrangebyscore(channel.unacked_index_key, 0, now - self.grace, withscores=True)
        ]
        if not unacked:
            return
        holders = [json.loads(raw) for raw in client.mget(list(client.scan_iter(HELD_PREFIX + "*"))) if raw]
        for tag in orphans(unacked, holders, now, self.grace):
            channel.qos.restore_by_tag(tag, leftmost=True)
            record_redelivered("holder_gone")
            log.warning("put back delivery %s: no live worker holds it (its holder is gone); it is sent again", tag)

    def send_lost_again(self) -> None:
        """Send again the pending files of this queue's jobs: called only when no message of the queue exists."""
        if self._jobs is None:
            self._jobs = open_job_store(self.state_url)
        for status in self._jobs.list_jobs(limit=None):
            if status.pending and status.queue == self.queue:
                self._send_again(self._jobs, status)

    def _send_again(self, jobs: JobStore, status: JobStatus) -> None:
        renewed = jobs.renew_pending(status.id, jobs.items(status.id, "pending"))
        for item, generation in renewed.items():
            url = item_url(item)
            message = ScoreMessage(url=url, job=status.id, item=item, force=status.force, generation=generation)
            self.app.send_task(SCORE_TASK, args=[url], kwargs=message.kwargs(), queue=self.queue)
        if renewed:
            record_redelivered("lost_whole", len(renewed))
            log.warning(
                "job %s: %d pending file(s) had no message on %r nor in any worker's hands (lost in a Redis "
                "restart); sent them again",
                status.id,
                len(renewed),
                self.queue,
            )


def queue_idle(channel: Any, queue: str) -> bool:
    """Nothing waits on ``queue`` (any priority) and nothing taken from it is unacknowledged."""
    client = channel.client
    if any(client.llen(channel._q_for_pri(queue, priority)) for priority in channel.priority_steps):
        return False
    for raw in client.hvals(channel.unacked_key):
        with contextlib.suppress(ValueError, TypeError):
            _, exchange, routing_key = json.loads(raw)
            if queue in (exchange, routing_key):
                return False
    return True


_running: list[Redelivery] = []


def start(app: Any, node: str, grace: float, queue: str | None = None, state_url: str = "") -> None:
    """Start the heartbeat and sweep in this (main) process, once; a no-op for the embedded filesystem broker.
    With ``queue`` (the scoring queue, when this worker consumes it), its jobs' lost messages are sent again."""
    if _running or not str(app.conf.broker_url).startswith(("redis://", "rediss://")):
        return
    thread = Redelivery(app, node, grace, queue, state_url)
    thread.start()
    log.info("a delivery no live worker holds is put back after %g s (AUDIOSET_REDELIVERY_GRACE)", grace)
    _running.append(thread)


def stop() -> None:
    while _running:
        _running.pop().stop()
