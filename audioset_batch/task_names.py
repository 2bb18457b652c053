"""Task and queue names: the one contract producers and workers share, with no Celery app behind it."""

from __future__ import annotations

SCORE_TASK = "audioset.score_object"
TRAIN_TASK = "audioset.train_model"
TRAINING_QUEUE = "training"
