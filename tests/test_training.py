from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from model import artifact
from model.training import Progress, TrainConfig, TrainingDataError, train
from tests.helpers import learnable_dataset, make_labels


def small_config(**overrides: object) -> TrainConfig:
    base = {
        "architecture": "decision_level_multi_attention",
        "batch_size": 64,
        "iterations": 80,
        "hidden_units": 64,
        "dropout": 0.2,
        "eval_every": 20,
        "checkpoint_every": 20,
        "seed": 3,
    }
    base.update(overrides)
    return TrainConfig(**base)  # type: ignore[arg-type]


def test_training_learns_a_learnable_signal(tmp_path: Path) -> None:
    x, y = learnable_dataset(800, 6, seed=0)
    chance = y.mean()
    result = train(small_config(), x, y, make_labels(6), tmp_path / "run")
    assert result.best_map > max(0.7, 2 * chance)
    assert result.history[0]["iteration"] == 20 and len(result.history) == 4
    manifest = artifact.verify(result.artifact)
    assert manifest.metrics["validation"]["mAP"] == pytest.approx(result.best_map)
    assert manifest.training["best_iteration"] == result.best_iteration
    assert manifest.training["hyperparameters"]["batch_size"] == 64
    assert len(manifest.training["data_fingerprint"]) == 16


def test_training_resumes_after_interruption(tmp_path: Path) -> None:
    x, y = learnable_dataset(400, 4, seed=1)
    seen: list[int] = []

    def interrupt(p: Progress) -> None:
        seen.append(p.iteration)
        if p.iteration == 30:
            raise KeyboardInterrupt

    config = small_config(iterations=60)
    with pytest.raises(KeyboardInterrupt):
        train(config, x, y, make_labels(4), tmp_path / "run", on_progress=interrupt)
    state = json.loads((tmp_path / "run" / "checkpoint" / "state.json").read_text())
    assert state["iteration"] == 20

    resumed: list[int] = []
    result = train(config, x, y, make_labels(4), tmp_path / "run", on_progress=lambda p: resumed.append(p.iteration))
    assert resumed[0] == 21 and resumed[-1] == 60
    assert [h["iteration"] for h in result.history] == [20, 40, 60]


def test_resume_refuses_other_settings(tmp_path: Path) -> None:
    x, y = learnable_dataset(200, 3, seed=2)
    train(small_config(iterations=20), x, y, make_labels(3), tmp_path / "run")
    with pytest.raises(TrainingDataError, match="other data or settings"):
        train(small_config(iterations=20, learning_rate=0.1), x, y, make_labels(3), tmp_path / "run")


def test_label_count_must_match(tmp_path: Path) -> None:
    x, y = learnable_dataset(50, 3)
    with pytest.raises(TrainingDataError, match="label list has 2"):
        train(small_config(), x, y, make_labels(2), tmp_path / "run")


def test_shuffle_sampling_also_trains(tmp_path: Path) -> None:
    x, y = learnable_dataset(300, 3, seed=4)
    result = train(small_config(balanced=False, iterations=40), x, y, make_labels(3), tmp_path / "run")
    assert result.best_map > 0.5
    assert np.isfinite(result.history[-1]["loss"])
