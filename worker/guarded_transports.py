"""kombu's Redis and filesystem transports, with one guard: a message is checked for the fields kombu itself
needs before kombu touches it.

kombu reads ``properties.delivery_info.routing_key`` (and the delivery tag) of every message it takes off a queue
without checking them; one written by hand without them raised ``KeyError`` inside the consumer, which dropped
the message and restarted the connection (Redis) or stopped the worker with an unrecoverable error (the
filesystem broker of ``audioset run``). Here such a message gets the queue it was taken from as its routing, a
delivery tag if it has none, and then meets Celery's and the task's own checks, which refuse what is wrong; a
file in the filesystem queue that is not JSON at all is dropped with a log line.

And one repair: kombu takes a message off its Redis queue (``BRPOP``) and only then records it as unacknowledged,
in a second command. When Redis goes away between the two, the message is in neither place: only in this
process's memory, and the consumer drops it as it reconnects. The file stayed pending for ever (the soak caught
it). Such a message is kept here (:func:`keep_undelivered`) and put back on its queue by the redelivery thread
as soon as Redis answers again (:func:`put_back_undelivered`), unless it did reach the unacknowledged set.

And one more: a channel whose close failed part way (Redis down) outlives its connection, and a later call on it
(the consumer closing it again once Redis is back, or acknowledging a file that finished after the reconnect)
asked the detached transport for its URL and raised ``AttributeError``, which Celery treats as unrecoverable: the
whole worker stopped and its files stayed pending (the soak caught it). Such a call now raises the connection
error kombu and Celery handle; the messages stay unacknowledged in Redis, where the redelivery sweep finds them.
"""

from __future__ import annotations

import logging
import threading
import uuid
from json import JSONDecodeError
from queue import Empty
from typing import Any

from kombu.transport import filesystem, redis
from redis.exceptions import ConnectionError as RedisConnectionError

log = logging.getLogger("audioset.worker")

_undelivered: list[tuple[dict[str, Any], str]] = []
_undelivered_lock = threading.Lock()


def keep_undelivered(message: dict[str, Any], queue: str) -> None:
    """A message taken off ``queue`` whose delivery failed as Redis went away: kept to be put back."""
    with _undelivered_lock:
        _undelivered.append((message, queue))


def put_back_undelivered(channel: Any) -> int:
    """Put each kept message back on its queue through ``channel`` (a live Redis channel); returns how many.

    One that reached the unacknowledged set after all is left to the sweep of unheld deliveries
    (:mod:`worker.redelivery`), so it is not sent twice. On an error the rest is kept for the next call.
    """
    with _undelivered_lock:
        pending = list(_undelivered)
        _undelivered.clear()
    put = 0
    for done, (message, queue) in enumerate(pending):
        try:
            tag = message.get("properties", {}).get("delivery_tag")
            if not channel.client.hexists(channel.unacked_key, tag):
                channel._put(queue, message)
                put += 1
                log.warning("put back a message of %r that Redis lost while delivering it (tag %s)", queue, tag)
        except Exception:
            with _undelivered_lock:
                _undelivered[:0] = pending[done:]
            raise
    return put


def repaired(message: Any, queue: str) -> dict[str, Any] | None:
    """The message with the routing fields kombu needs, or None if it is not a task message at all."""
    if not isinstance(message, dict) or not isinstance(message.get("properties", {}), dict):
        return None
    headers = message.get("headers")
    if not isinstance(headers, dict) or not isinstance(headers.get("task"), str):
        return None  # not a task message of Celery's protocol 2: Celery's consumer would stop on it
    properties = message.setdefault("properties", {})
    info = properties.get("delivery_info")
    if not isinstance(info, dict):
        info = properties["delivery_info"] = {}
    for field in ("exchange", "routing_key"):
        if not isinstance(info.get(field), str):
            log.warning("a message on %r had no valid %s; treating it as sent to that queue", queue, field)
            info[field] = queue
    if not isinstance(properties.get("delivery_tag"), str):
        properties["delivery_tag"] = uuid.uuid4().hex
    return message


class _Guarded:
    def _deliver(self, message: Any, queue: str) -> None:
        fixed = repaired(message, queue)
        if fixed is None:
            log.error("dropped an item on %r that is not a task message (%s)", queue, type(message).__name__)
            return
        super()._deliver(fixed, queue)  # type: ignore[misc]


class DetachedChannelError(RedisConnectionError):
    """A call on a channel whose connection has been closed: a connection error, so kombu and Celery recover."""


class _RedisChannel(redis.Channel):  # type: ignore[misc]
    def _connparams(self, asynchronous: bool = False) -> Any:
        if self.connection.client is None:  # closed under this channel: see the module's note
            raise DetachedChannelError("this channel's broker connection is closed")
        return super()._connparams(asynchronous=asynchronous)  # type: ignore[no-untyped-call]

    def _brpop_read(self, **options: Any) -> Any:
        try:
            return super()._brpop_read(**options)  # type: ignore[no-untyped-call]
        except JSONDecodeError as exc:  # the item is already off the queue; kombu would stop the worker
            log.error("dropped an item that is not a task message: %s", exc)
            return True

    def _get(self, queue: Any, timeout: Any = None) -> Any:
        try:
            return super()._get(queue)  # type: ignore[no-untyped-call]
        except JSONDecodeError as exc:
            log.error("dropped an item on %r that is not a task message: %s", queue, exc)
            raise Empty() from None


class RedisTransport(_Guarded, redis.Transport):  # type: ignore[misc]
    Channel = _RedisChannel

    def _deliver(self, message: Any, queue: str) -> None:
        try:
            super()._deliver(message, queue)
        except self.connection_errors:  # off the queue, perhaps not yet unacknowledged: see the module's note
            if isinstance(message, dict):
                keep_undelivered(message, queue)
            raise


class _FilesystemChannel(filesystem.Channel):  # type: ignore[misc]
    def _get(self, queue: Any, timeout: Any = None) -> Any:
        try:
            return super()._get(queue)  # type: ignore[no-untyped-call]
        except JSONDecodeError as exc:  # the file is already taken off the queue
            log.error("dropped an item on %r that is not a task message: %s", queue, exc)
            raise Empty() from None


class FilesystemTransport(_Guarded, filesystem.Transport):  # type: ignore[misc]
    Channel = _FilesystemChannel
