"""kombu's Redis transport, with one guard: a message is checked for the fields kombu itself needs before
kombu touches it.

kombu reads ``properties.delivery_info.routing_key`` (and the delivery tag) of every message it takes off a queue
without checking them; one written by hand without them raised ``KeyError`` inside the consumer, which dropped
the message and restarted the connection. Here such a message gets the queue it was taken from as its routing,
a delivery tag if it has none, and then meets Celery's and the task's own checks, which refuse what is wrong.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from kombu.transport import redis

log = logging.getLogger("audioset.worker")


def repaired(message: Any, queue: str) -> dict[str, Any] | None:
    """The message with the routing fields kombu needs, or None if it is not a message at all."""
    if not isinstance(message, dict) or not isinstance(message.get("properties", {}), dict):
        return None
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


class Transport(redis.Transport):  # type: ignore[misc]
    def _deliver(self, message: Any, queue: str) -> None:
        fixed = repaired(message, queue)
        if fixed is None:
            log.error("dropped an item on %r that is not a message (%s)", queue, type(message).__name__)
            return
        super()._deliver(fixed, queue)  # type: ignore[no-untyped-call]
