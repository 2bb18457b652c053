"""A Redis restart must never stop the worker: the consumer's channel that outlived its connection.

Celery recovers from a lost broker by collecting the connection (which closes its channels, then detaches the
transport) and closing it again. A close that failed part way, with Redis down, left the channel open on a
transport with no URL; the second close, once Redis was back, raised ``AttributeError``, Celery logged
"Unrecoverable error" and the whole worker stopped with files in hand (the soak caught it in CI: 5 of 16 files
pending for ever). Real Redis with AOF on, stopped and started like the soak does.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import redis
from kombu import Connection, Exchange, Queue

from tests.conftest import start_redis
from worker.guarded_transports import DetachedChannelError, RedisTransport

pytestmark = pytest.mark.integration


def test_a_channel_left_open_by_a_failed_close_raises_connection_errors_not_attribute_errors(tmp_path: Path) -> None:
    server = start_redis(tmp_path, "--appendonly", "yes", "--appendfsync", "always")
    queue = f"detached-{uuid.uuid4().hex[:8]}"
    connection = Connection(server.db_url(0), transport=RedisTransport)
    try:
        channel = connection.default_channel
        info = {"exchange": "", "routing_key": queue}
        properties = {"delivery_tag": "in-hand", "delivery_info": info, "body_encoding": "base64"}
        channel._put(queue, {"body": "e30=", "headers": {"task": "t"}, "properties": properties})
        # with Redis down, the close fails reading the pending BRPOP, then again deleting this fanout queue
        # (deleted on close, as the worker's remote-control queue is): both before the channel is marked closed
        Queue(f"{queue}.pidbox", Exchange(f"{queue}.fanout", type="fanout"), auto_delete=True)(channel).declare()
        received: list[object] = []
        channel.basic_consume(queue, no_ack=False, callback=received.append, consumer_tag="c")
        connection.drain_events(timeout=5)
        assert len(received) == 1
        channel._brpop_start()  # waiting for the next message, as the worker's event loop leaves it

        server.stop()
        connection.collect(socket_timeout=2)  # Celery's first step after a lost connection
        assert not channel.closed and connection._transport is None  # the state that stopped the worker
        server.start()

        connection.close()  # Celery's second step: raised AttributeError, "Unrecoverable error"
        with pytest.raises(DetachedChannelError) as acked:
            received[0].ack()  # type: ignore[attr-defined]  # a file that finished after the reconnect
        assert isinstance(acked.value, redis.ConnectionError)  # in kombu's connection_errors: "Couldn't ack"
        client = redis.Redis.from_url(server.db_url(0))
        assert client.hkeys("unacked") == [b"in-hand"]  # still unacknowledged, for the redelivery sweep
        client.close()
    finally:
        server.stop()
