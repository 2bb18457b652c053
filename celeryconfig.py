"""Celery configuration module (``app.config_from_object("celeryconfig")``).

Every value comes from ``AUDIOSET_*`` settings; see ``worker/config.py`` for the reasoning.
"""

from audioset_batch.settings import get_settings
from worker.config import celery_config

globals().update(celery_config(get_settings()))
