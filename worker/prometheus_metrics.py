"""Prometheus metrics for workers, safe with several prefork processes.

Children record into prometheus_client's multiprocess files; the Celery parent serves
the merged view on ``AUDIOSET_METRICS_PORT`` and adds the queue depth at scrape time.
``PROMETHEUS_MULTIPROC_DIR`` must be set before prometheus_client is first imported,
so :func:`prepare_multiprocess_dir` runs when the worker app is imported.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

from audioset_batch.settings import Settings

log = logging.getLogger("audioset.metrics")
ENV = "PROMETHEUS_MULTIPROC_DIR"


def prepare_multiprocess_dir(settings: Settings) -> None:
    # A fresh directory per worker start: files left by an earlier run would be counted again.
    # (Celery may start the pool before ``worker_init``, so the parent must not clean it later.)
    if settings.metrics_port and not os.environ.get(ENV):
        os.environ[ENV] = tempfile.mkdtemp(prefix="audioset-metrics-")
    if os.environ.get(ENV) and "prometheus_client" in sys.modules:
        # The celery CLI loads plugins (Flower) that import prometheus_client before our app module,
        # which fixes its value class to single-process; switch it so metrics created from now on
        # write to the shared directory.
        from prometheus_client import values

        if not getattr(values.ValueClass, "_multiprocess", False):
            values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]


def enabled() -> bool:
    return bool(os.environ.get(ENV))


class _Metrics:
    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.files = Counter("audioset_files", "Files finished, by status", ["status"])
        self.clips = Counter("audioset_clips", "Clips scored")
        self.failures = Counter("audioset_failures", "Files that ended in an error record, by error class", ["error"])
        self.seconds = Histogram(
            "audioset_scoring_seconds",
            "Seconds to score one file (download to upload)",
            buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600),
        )
        self.redelivered = Counter(
            "audioset_redelivered",
            "Messages sent again because no worker had them, by why: holder_gone (its worker was lost), "
            "lost_in_delivery (Redis went away while handing it over), lost_whole (Redis lost it in a restart)",
            ["reason"],
        )
        self.model = Gauge(
            "audioset_model_info", "The model each worker process serves", ["model"], multiprocess_mode="max"
        )


_metrics: _Metrics | None = None


def metrics() -> _Metrics:
    global _metrics
    if _metrics is None:
        _metrics = _Metrics()
    return _metrics


def record_file(status: str, clips: int, seconds: float, error: str | None) -> None:
    m = metrics()
    m.files.labels(status).inc()
    if status == "scored":
        m.clips.inc(clips)
        m.seconds.observe(seconds)
    if error:
        m.failures.labels(error).inc()


def record_redelivered(reason: str, count: int = 1) -> None:
    """Count messages the worker's main process sent again (a no-op without ``AUDIOSET_METRICS_PORT``)."""
    if count and enabled():
        metrics().redelivered.labels(reason).inc(count)


class QueueDepthCollector:
    """Reads the queue length from Redis at scrape time (one LLEN)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        family = GaugeMetricFamily("audioset_queue_depth", "Messages waiting in the scoring queue", labels=["queue"])
        if self.settings.broker_url.startswith(("redis://", "rediss://")):
            try:
                import redis

                client = redis.Redis.from_url(self.settings.broker_url, socket_timeout=2, socket_connect_timeout=2)
                family.add_metric([self.settings.queue], float(client.llen(self.settings.queue)))
            except Exception as exc:
                log.warning("queue depth unavailable: %s", exc)
        yield family


def serve(settings: Settings) -> None:
    """Start the HTTP endpoint in the Celery parent (merged view of every child)."""
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    registry.register(QueueDepthCollector(settings))  # type: ignore[arg-type]
    start_http_server(settings.metrics_port, addr=settings.metrics_host, registry=registry)
    log.info("metrics on %s:%d/metrics", settings.metrics_host, settings.metrics_port)


def process_died(pid: int) -> None:
    if enabled():
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
