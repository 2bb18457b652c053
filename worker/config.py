"""Celery settings derived from :class:`Settings`; each reliability choice says why."""

from __future__ import annotations

import ssl
import sys
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from audioset_batch.settings import Settings
from audioset_batch.task_names import SCORE_TASK, TRAIN_TASK, TRAINING_QUEUE

__all__ = ["SCORE_TASK", "TRAINING_QUEUE", "TRAIN_TASK", "celery_config", "worker_argv", "worker_command"]


def worker_argv(concurrency: int, queues: str, loglevel: str = "INFO", *extra: str, quiet: bool = False) -> list[str]:
    """Arguments after ``celery -A worker``: a prefork worker on the given queues.

    ``quiet`` drops Celery's start-up banner from stdout: under JSON logging a log
    collector that merges the streams then sees JSON lines only.
    """
    banner = ["--quiet"] if quiet else []
    return [*banner, "worker", "--pool", "prefork", "-c", str(concurrency), "-Q", queues, "-l", loglevel, *extra]


def worker_command(concurrency: int, queues: str, loglevel: str = "INFO", *extra: str) -> list[str]:
    """A full command line that starts a worker process with this interpreter."""
    return [sys.executable, "-m", "celery", "-A", "worker", *worker_argv(concurrency, queues, loglevel, *extra)]


def transport_options(settings: Settings) -> dict[str, Any]:
    if settings.broker_url.startswith("filesystem://"):
        folder = (settings.local_root / ".broker").resolve()
        for sub in ("queue", "processed", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        return {
            # kombu's default control folder is ./control in whatever directory the process runs in
            "control_folder": str(folder / "control"),
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "processed_folder": str(folder / "processed"),
            "store_processed": False,
        }
    # Redis redelivers an unacked message after the visibility timeout. It must exceed the
    # hard time limit, or a slow but healthy task would be handed to a second worker.
    # kombu sweeps for expired unacked messages every interval x throttle seconds (10 x 10 by default);
    # sweep every 30 s so a message orphaned by a connection loss returns soon after its timeout.
    return {
        "visibility_timeout": settings.effective_visibility_timeout,
        "unacked_restore_interval": 30,
        "unacked_restore_throttle": 1,
    }


def broker_ssl(url: str) -> dict[str, Any] | None:
    """TLS options for a ``rediss://`` broker, from the URL's query (``ssl_cert_reqs``, ``ssl_ca_certs``,
    ``ssl_certfile``, ``ssl_keyfile``). Certificates are verified unless ``ssl_cert_reqs=none``."""
    if not url.startswith("rediss://"):
        return None
    query = dict(parse_qsl(urlsplit(url).query))
    levels = {"required": ssl.CERT_REQUIRED, "optional": ssl.CERT_OPTIONAL, "none": ssl.CERT_NONE}
    reqs = query.get("ssl_cert_reqs", "required").lower().removeprefix("cert_")
    options: dict[str, Any] = {"ssl_cert_reqs": levels.get(reqs, ssl.CERT_REQUIRED)}
    for key in ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile"):
        if key in query:
            options[key] = query[key]
    return options


def use_guarded_transports() -> None:
    """``redis://``, ``rediss://`` and ``filesystem://`` name kombu's transports guarded against hand-written
    messages that lack their routing fields (``worker/guarded_transports.py``), in this process, under the names
    users know."""
    from kombu.transport import TRANSPORT_ALIASES

    for scheme in ("redis", "rediss"):
        TRANSPORT_ALIASES[scheme] = "worker.guarded_transports:RedisTransport"
    TRANSPORT_ALIASES["filesystem"] = "worker.guarded_transports:FilesystemTransport"


def celery_config(settings: Settings) -> dict[str, Any]:
    options = transport_options(settings)
    use_guarded_transports()
    return {
        "broker_use_ssl": broker_ssl(settings.broker_url),
        # The filesystem transport needs no host; naming one keeps kombu from warning that none was supplied.
        "broker_url": "filesystem://localhost//"
        if settings.broker_url.startswith("filesystem")
        else settings.broker_url,
        "broker_transport_options": options,
        # Celery reads the visibility timeout here too when a Redis result backend is configured.
        "result_backend_transport_options": dict(options),
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,  # reconnect forever after a Redis restart
        "task_ignore_result": True,  # job state lives in our own store, not in a result backend
        # JSON only: a pickled message would run arbitrary code on the worker.
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "event_serializer": "json",
        # Ack after the file is scored; a killed child puts the message back (at-least-once).
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        # One message per child at a time: a long file never strands queued work behind it.
        "worker_prefetch_multiplier": 1,
        # Let a file in flight during a broker outage finish: its result lands (idempotently), and if
        # its ack is lost, the redelivery after the visibility timeout finds the summary and skips.
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        # A child reports "up" only after worker_process_init, i.e. after TensorFlow and the model load
        # (several seconds). Celery's 4 s default kills such children and respawns them forever.
        "worker_proc_alive_timeout": 120.0,
        "task_soft_time_limit": settings.soft_time_limit,
        "task_time_limit": settings.time_limit,
        "task_default_queue": settings.queue,
        "task_routes": {SCORE_TASK: {"queue": settings.queue}, TRAIN_TASK: {"queue": TRAINING_QUEUE}},
        "worker_hijack_root_logger": False,
        "worker_redirect_stdouts": False,
    }
