"""Celery worker: ``celery -A worker worker`` or ``audioset worker``."""

from worker.app import app

__all__ = ["app"]
