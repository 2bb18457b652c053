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
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from typing import Any

from worker.guarded_transports import put_back_undelivered

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

    def __init__(self, app: Any, node: str, grace: float) -> None:
        super().__init__(name="redelivery", daemon=True)
        self.app = app
        self.node = node
        #: A delivery younger than this is never put back: its holder may not have said so yet.
        self.grace = grace
        self.stopping = threading.Event()
        self._connection: Any = None

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
        put_back_undelivered(channel)  # this process's messages Redis lost mid-delivery, first
        now = time.time()
        mine = f"{HELD_PREFIX}{self.node}:{os.getpid()}"  # two workers given one node name still count apart
        client.set(mine, json.dumps({"at": now, "tags": held_tags()}), ex=HOLDER_TTL_SECONDS)
        if not client.set(REAPER_LOCK, self.node, nx=True, ex=max(1, int(HEARTBEAT_SECONDS))):
            return  # another worker sweeps this round
        unacked = [
            (tag.decode() if isinstance(tag, bytes) else str(tag), float(at))
            for tag, at in client.zrangebyscore(channel.unacked_index_key, 0, now - self.grace, withscores=True)
        ]
        if not unacked:
            return
        holders = [json.loads(raw) for raw in client.mget(list(client.scan_iter(HELD_PREFIX + "*"))) if raw]
        for tag in orphans(unacked, holders, now, self.grace):
            channel.qos.restore_by_tag(tag, leftmost=True)
            log.warning("put back delivery %s: no live worker holds it (its holder is gone); it is sent again", tag)


_running: list[Redelivery] = []


def start(app: Any, node: str, grace: float) -> None:
    """Start the heartbeat and sweep in this (main) process, once; a no-op for the embedded filesystem broker."""
    if _running or not str(app.conf.broker_url).startswith(("redis://", "rediss://")):
        return
    thread = Redelivery(app, node, grace)
    thread.start()
    log.info("a delivery no live worker holds is put back after %g s (AUDIOSET_REDELIVERY_GRACE)", grace)
    _running.append(thread)


def stop() -> None:
    while _running:
        _running.pop().stop()
