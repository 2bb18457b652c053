"""The one way the service trains: loaded data in, an artifact out, for `audioset train` and queued runs alike."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from audioset_batch.training.datasets import TrainingData
from model.train_config import TrainConfig
from model.training import Progress, TrainResult, train


def train_on(
    config: TrainConfig, loaded: TrainingData, output_dir: Path, on_progress: Callable[[Progress], None] | None
) -> TrainResult:
    """Train on ``loaded`` (selecting checkpoints on its held-out set when it has one); the artifact's
    manifest names the files it was trained and validated on."""
    dataset, held_out = loaded.train, loaded.held_out
    return train(
        config,
        dataset.x,
        dataset.y,
        loaded.labels,
        output_dir,
        on_progress=on_progress,
        data_description=", ".join(dataset.sources),
        validation=(held_out.x, held_out.y) if held_out else None,
        validation_description=", ".join(held_out.sources) if held_out else "",
    )
