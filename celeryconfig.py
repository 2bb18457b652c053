"""Celery configuration module (``app.config_from_object("celeryconfig")``).

Every value comes from ``AUDIOSET_*`` settings (see ``worker/config.py`` for the reasoning), read when
Celery first asks for one, not when this module is imported.
"""

from __future__ import annotations

from functools import cache
from typing import Any


@cache
def _config() -> dict[str, Any]:
    from audioset_batch.settings import get_settings
    from worker.config import celery_config

    return celery_config(get_settings())


def __getattr__(name: str) -> Any:
    try:
        return _config()[name]
    except KeyError:
        raise AttributeError(f"module 'celeryconfig' has no attribute {name!r}") from None


def __dir__() -> list[str]:
    return sorted(_config())
