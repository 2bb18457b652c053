"""Celery worker: ``celery -A worker worker`` or ``audioset worker``.

Importing this package builds nothing: ``celery -A worker`` asks for ``worker.celery``, and only
then is the app built from settings (:func:`worker.app.get_app`).
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "celery":
        from worker.app import get_app

        return get_app()
    raise AttributeError(f"module 'worker' has no attribute {name!r}")
