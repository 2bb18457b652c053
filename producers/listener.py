"""``audioset listen``: turn bucket notifications into scoring tasks, exactly once per object version.

Two inputs feed the same handler: a Redis list (MinIO's Redis target) and an
HTTP endpoint (S3-style webhooks, IBM Code Engine COS subscriptions). Each
object version becomes the job item ``<url>#<etag>``, so duplicate
notifications enqueue nothing. A malformed payload is logged, counted and
skipped; it never stops the listener or costs another event. A payload that
fails for good (an invalid key, no permission) is set aside in a dead-letter
list instead of blocking the ones behind it; an outage (broker, job store,
object store) is retried with backoff.

The listener's job is its memory of what it sent, so it must not grow forever: a
new version of an object drops the finished items of its older versions, and a
removal event drops all of the object's finished items. The job then holds one
item per object present.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import signal
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from celery import Celery

from audioset_batch.errors import AudiosetError, ConfigError, InvalidObjectKeyError, ObjectNotFoundError
from audioset_batch.jobs.job_store import JobStore
from audioset_batch.retry_policy import backoff_delay, is_transient
from audioset_batch.settings import DEFAULT_QUEUE, Settings
from audioset_batch.storage.factory import store_for
from audioset_batch.storage.object_store import ObjectURL, check_source, is_result_key
from producers.enqueue import send
from producers.http_endpoint import EndpointLimits, NotificationEndpoint, Reply
from producers.notifications import EventFilter, MalformedEventError, parse_events

log = logging.getLogger("audioset.listener")
RETRY_MAX_SECONDS = 30.0


def dead_letter_key(list_key: str) -> str:
    return f"{list_key}:failed"


@dataclass(slots=True)
class Handled:
    events: int = 0
    enqueued: int = 0
    duplicates: int = 0
    filtered: int = 0
    missing: int = 0
    removed: int = 0

    def to_json(self) -> dict[str, int]:
        return asdict(self)


class Listener:
    def __init__(
        self,
        settings: Settings,
        app: Celery,
        jobs: JobStore,
        event_filter: EventFilter | None = None,
        scheme: str = "cos",
    ) -> None:
        self.settings = settings
        self.app = app
        self.jobs = jobs
        self.filter = event_filter or EventFilter()
        self.scheme = scheme
        # One job per event source and queue: a job's pending files are sent again on its queue when a message
        # is lost (worker/redelivery.py). The default queue keeps the id listeners had before.
        route = f"{scheme}:{self.filter}" + ("" if settings.queue == DEFAULT_QUEUE else f":{settings.queue}")
        ident = hashlib.sha1(route.encode(), usedforsecurity=False).hexdigest()[:12]
        self.job = jobs.create_job(name=f"listen {scheme}://", job_id=f"listen-{ident}", queue=settings.queue)
        self._lock = threading.Lock()

    def handle(self, payload: bytes | str | Any) -> Handled:
        """Parse and enqueue; raises :class:`MalformedEventError` (counted as rejected)."""
        self.jobs.incr_counter("listener.received")
        try:
            events = parse_events(payload)
        except MalformedEventError as exc:
            self.jobs.incr_counter("listener.rejected")
            log.warning("rejected notification: %s", exc)
            raise
        for event in events:  # all or nothing: a payload naming any key the worker would refuse is refused whole
            if self.filter.accepts(event) and not is_result_key(
                event.bucket, event.key, self.settings.results_bucket, self.settings.results_prefix
            ):
                check_source(ObjectURL(self.scheme, event.bucket, event.key), self.settings.allowed_sources)
        result = Handled(events=len(events))
        for event in events:
            if is_result_key(event.bucket, event.key, self.settings.results_bucket, self.settings.results_prefix):
                result.filtered += 1
                continue
            url = ObjectURL(self.scheme, event.bucket, event.key)
            if self.filter.is_removal(event):
                result.removed += 1
                dropped = self._drop_finished_versions(url, keep=None)
                log.info("%s was removed; %d finished item(s) dropped from job %s", url, dropped, self.job)
                continue
            if not self.filter.accepts(event):
                result.filtered += 1
                continue
            etag = event.etag
            if not etag:
                try:
                    etag = store_for(self.scheme, self.settings).stat(event.bucket, event.key).etag
                except ObjectNotFoundError:
                    result.missing += 1
                    log.warning("notification for %s, but the object is gone; skipped", url)
                    continue
            with self._lock:
                sent = send(self.app, self.jobs, self.job, [(url, f"{url}#{etag}")], self.settings)
            if sent:
                result.enqueued += 1
                log.info("enqueued %s (etag %s) into job %s", url, etag, self.job)
                self._drop_finished_versions(url, keep=f"{url}#{etag}")
            else:
                result.duplicates += 1
        for name in ("enqueued", "duplicates", "filtered", "removed"):
            if getattr(result, name):
                self.jobs.incr_counter(f"listener.{name}", getattr(result, name))
        return result

    def _drop_finished_versions(self, url: ObjectURL, keep: str | None) -> int:
        """Drop the finished items of ``url``'s versions other than ``keep``; pending ones stay."""
        stale = [item for item in self.jobs.items(self.job, prefix=f"{url}#") if item != keep]
        return self.jobs.drop_finished_items(self.job, stale) if stale else 0

    def run_redis_list(self, redis_url: str, list_key: str, stop: threading.Event) -> None:
        """Consume a Redis list reliably: each payload moves to ``<key>:processing`` until handled,
        so a crash mid-payload replays it on restart instead of losing it."""
        import redis

        client = redis.Redis.from_url(redis_url, socket_timeout=30, health_check_interval=30)
        processing = f"{list_key}:processing"
        failed = dead_letter_key(list_key)
        log.info("listening on Redis list %s (job %s; failing payloads go to %s)", list_key, self.job, failed)
        retries = 0
        while not stop.is_set():
            try:
                leftover = client.lindex(processing, -1)
                payload = leftover if leftover is not None else client.blmove(list_key, processing, 1, "LEFT", "RIGHT")
                if payload is None:
                    continue
                try:
                    self.handle(payload)
                except MalformedEventError:
                    pass  # logged and counted in handle(); drop it and carry on
                except Exception as exc:
                    if is_transient(exc):
                        retries += 1
                        delay = backoff_delay(retries, 1.0, RETRY_MAX_SECONDS, jitter=False)
                        log.warning("could not enqueue a notification (%s); retrying in %.0f s", exc, delay)
                        stop.wait(delay)
                        continue
                    self._set_aside(client, processing, failed, payload, exc)  # type: ignore[arg-type]
                    retries = 0
                    continue
                retries = 0
                client.lrem(processing, -1, payload)  # type: ignore[arg-type]
            except redis.RedisError as exc:
                log.warning("Redis unavailable (%s); reconnecting", exc)
                stop.wait(1.0)

    def _set_aside(self, client: Any, processing: str, failed: str, payload: bytes, exc: Exception) -> None:
        """Move a payload that cannot succeed to the dead-letter list, in one transaction."""
        pipe = client.pipeline(transaction=True)
        pipe.rpush(failed, payload)
        pipe.lrem(processing, -1, payload)
        pipe.execute()
        self.jobs.incr_counter("listener.failed")
        log.error(
            "notification set aside in %s: %s: %s (payload: %s)",
            failed,
            type(exc).__name__,
            exc,
            payload[:300].decode("utf-8", "replace"),
        )

    @staticmethod
    def replay_failed(redis_url: str, list_key: str) -> int:
        """Move every set-aside payload back onto the list (after fixing what made it fail)."""
        import redis

        client = redis.Redis.from_url(redis_url, socket_timeout=30)
        moved = 0
        while client.lmove(dead_letter_key(list_key), list_key, "LEFT", "RIGHT") is not None:
            moved += 1
        return moved

    def http_reply(self, body: bytes) -> Reply:
        """One HTTP notification: 202 with what happened, 400 malformed, 422 never enqueueable, 503 retry later."""
        try:
            result = self.handle(body)
        except MalformedEventError as exc:
            return Reply(400, {"error": str(exc)})
        except InvalidObjectKeyError as exc:  # can never succeed: say so, so the sender stops retrying
            self.jobs.incr_counter("listener.failed")
            log.error("notification refused: %s: %s", type(exc).__name__, exc)
            return Reply(422, {"error": f"{type(exc).__name__}: {exc}"})
        except Exception as exc:  # our own errors and outages: the sender should retry later
            if not (isinstance(exc, AudiosetError) or is_transient(exc)):
                log.exception("notification failed unexpectedly")
            return Reply(503, {"error": f"could not enqueue, retry later: {type(exc).__name__}"})
        return Reply(202, result.to_json())

    def http_server(self, host: str, port: int) -> NotificationEndpoint:
        """The bounded HTTP endpoint (see :mod:`producers.http_endpoint`); refuses to expose itself unauthenticated."""
        token = self.settings.listen_token.get_secret_value() if self.settings.listen_token else None
        if token is None and not is_loopback(host):
            raise ConfigError(
                f"refusing to accept unauthenticated notifications on {host}:{port}; set AUDIOSET_LISTEN_TOKEN "
                "(senders then send 'Authorization: Bearer <token>') or listen on 127.0.0.1"
            )
        if not self.settings.allowed_sources:
            log.warning("AUDIOSET_ALLOWED_SOURCES is empty: notifications may name any bucket the credentials can read")
        counters = lambda: {k: v for k, v in self.jobs.counters().items() if k.startswith("listener.")}  # noqa: E731
        limits = EndpointLimits(self.settings.listen_max_connections, self.settings.listen_timeout)
        return NotificationEndpoint(host, port, self.http_reply, counters, token=token, limits=limits)


def serve_until_stopped(
    listener: Listener,
    *,
    http: tuple[str, int] | None,
    redis_list: str | None,
    redis_url: str | None,
    announce: Callable[[str], None] = log.info,
) -> None:
    """Run the HTTP endpoint and/or the Redis-list consumer until SIGTERM or SIGINT, then stop both cleanly."""
    settings = listener.settings
    stop = threading.Event()
    threads: list[threading.Thread] = []
    server = None
    if http is not None:
        server = listener.http_server(http[0], http[1])
        threads.append(threading.Thread(target=server.serve_forever, name="http", daemon=True))
        announce(f"listening for HTTP notifications on {http[0]}:{server.server_port}")
    if redis_list:
        source = redis_url or settings.broker_url
        threads.append(
            threading.Thread(
                target=listener.run_redis_list, name="redis-list", daemon=True, args=(source, redis_list, stop)
            )
        )
        announce(f"listening on Redis list {redis_list}")
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    for thread in threads:
        thread.start()
    stop.wait()
    if server is not None:
        server.shutdown()
    for thread in threads:
        thread.join(timeout=5)


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"
