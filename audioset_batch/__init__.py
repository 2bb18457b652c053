"""audioset-batch: score AudioSet-format embedding files from object storage with Celery workers."""

__version__ = "0.1.0"
