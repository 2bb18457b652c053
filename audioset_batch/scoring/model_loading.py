"""The model as the settings ask for it: one function, so the worker and every command load it alike."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from audioset_batch.settings import Settings

if TYPE_CHECKING:
    from model.inference import Predictor


def load_predictor(
    settings: Settings,
    model_path: Path | None = None,
    precision: str | None = None,
    *,
    worker: bool = False,
) -> Predictor:
    """The model as settings (or explicit overrides) ask for it: the one place that reads
    ``AUDIOSET_MODEL_PATH``, ``AUDIOSET_BATCH_SIZE``, ``AUDIOSET_PRECISION`` and ``AUDIOSET_TF_THREADS``.

    A ``worker`` process shares the cores with its siblings (``AUDIOSET_TF_THREADS``, by default cores /
    concurrency); a command alone uses every core unless ``AUDIOSET_TF_THREADS`` says otherwise. Imports
    TensorFlow only for an artifact without a compiled form for the precision.
    """
    from model.inference import Predictor

    return Predictor.from_artifact(
        model_path or settings.model_path,
        batch_size=settings.batch_size,
        precision=precision or settings.precision,
        threads=settings.effective_tf_threads if worker else settings.tf_threads or None,
    )
