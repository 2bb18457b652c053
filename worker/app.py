"""The Celery application, built when first asked for (``celery -A worker`` asks ``worker.celery``).

Importing this module reads no settings and connects to nothing.
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.signals import celeryd_init, setup_logging

from audioset_batch.settings import Settings, get_settings
from worker.config import TRAINING_QUEUE, celery_config


@setup_logging.connect
def _configure_logging(**_: Any) -> None:
    """Our handler (text or JSON, secrets masked) instead of Celery's."""
    from audioset_batch.logs import configure_logging, warn_unknown_variables

    configure_logging(get_settings())
    warn_unknown_variables()


@celeryd_init.connect
def _training_lane(options: dict[str, Any] | None = None, **_: Any) -> None:
    """Register the training task in a worker that consumes the training queue, and in no other."""
    queues = (options or {}).get("queues") or []
    names = queues.split(",") if isinstance(queues, str) else [str(q) for q in queues]
    if TRAINING_QUEUE in {name.strip() for name in names}:
        import worker.training_task  # noqa: F401


def make_app(settings: Settings | None = None) -> Celery:
    """An app for the given settings (producers, tests) or for the environment (workers)."""
    app = Celery("audioset", include=["worker.tasks"])
    if settings is None:
        app.config_from_object("celeryconfig")
    else:
        app.conf.update(celery_config(settings))
    return app


_app: Celery | None = None


def get_app() -> Celery:
    """The worker's app, from the environment's settings; built once, on first use."""
    global _app
    if _app is None:
        from worker.prometheus_metrics import prepare_multiprocess_dir

        prepare_multiprocess_dir(get_settings())  # before anything imports prometheus_client
        _app = make_app()
    return _app


def queue_consumers(app: Celery, queue: str, timeout: float = 1.0) -> list[str] | None:
    """The workers (node names) consuming ``queue``, asked over the broker; None when none can be asked."""
    try:
        replies = app.control.inspect(timeout=timeout).active_queues() or {}
    except Exception:  # a broker without broadcast, or one that is down: no answer either way
        return None
    return sorted(node for node, queues in replies.items() if any(q.get("name") == queue for q in queues or []))
