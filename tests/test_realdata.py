"""Opt-in checks on the real AudioSet balanced set (AUDIOSET_DATA_DIR; .ci/run sets it)."""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import numpy as np
import pytest

from audioset_batch.settings import DEFAULT_MODEL_PATH
from model import artifact
from model.inference import Predictor
from model.labels import load_labels
from model.metrics import evaluate
from model.train_config import validation_split_of
from model.training import data_fingerprint, stratified_split

pytestmark = pytest.mark.realdata


def data_dir() -> Path:
    return Path(os.environ["AUDIOSET_DATA_DIR"])


def test_shipped_model_reaches_its_recorded_validation_map() -> None:
    manifest = artifact.verify(DEFAULT_MODEL_PATH)
    params = manifest.training["hyperparameters"]
    with h5py.File(data_dir() / "bal_train.h5", "r") as f:
        x, y = f["x"][:], f["y"][:]
    assert data_fingerprint(x, y) == manifest.training["data_fingerprint"], "not the data the model was trained on"
    _, val_idx = stratified_split(y, *validation_split_of(params))
    assert len(val_idx) == manifest.training["validation_clips"]
    predictor = Predictor.from_artifact(DEFAULT_MODEL_PATH)
    result = evaluate(y[val_idx], predictor.predict(x[val_idx]))
    recorded = manifest.metrics["validation"]["mAP"]
    assert result.mean_average_precision == pytest.approx(recorded, abs=0.002)
    card = (Path(__file__).resolve().parent.parent / "docs" / "model-card.md").read_text(encoding="utf-8")
    assert f"{recorded:.4f}" in card, "the model card must quote the shipped model's validation mAP"


def test_shipped_classes_are_the_audioset_release() -> None:
    manifest = artifact.read_manifest(DEFAULT_MODEL_PATH)
    release = load_labels(data_dir() / "class_labels_indices.csv")
    assert manifest.classes == release


def test_demo_sample_uses_real_clips(tmp_path: Path) -> None:
    from audioset_batch.demo import write_sample

    origin = write_sample(tmp_path / "s.h5", clips=4)
    assert "real clips" in origin
    with h5py.File(tmp_path / "s.h5", "r") as f:
        assert f["x"].shape == (4, 10, 128) and f["y"].shape == (4, 527)
        assert np.asarray(f["y"]).any()


@pytest.fixture(scope="module")
def validation_split() -> tuple[np.ndarray, np.ndarray]:
    manifest = artifact.read_manifest(DEFAULT_MODEL_PATH)
    params = manifest.training["hyperparameters"]
    with h5py.File(data_dir() / "bal_train.h5", "r") as f:
        x, y = f["x"][:], f["y"][:]
    _, val_idx = stratified_split(y, *validation_split_of(params))
    return x[val_idx], y[val_idx]


@pytest.mark.parametrize("precision", ["bfloat16", "int8"])
def test_fast_precision_map_within_0_002_of_float32(
    precision: str, validation_split: tuple[np.ndarray, np.ndarray]
) -> None:
    from model.inference import cpu_supports_bfloat16

    if precision == "bfloat16" and not cpu_supports_bfloat16():
        pytest.skip("no bfloat16 support on this CPU")
    x, y = validation_split
    full = evaluate(y, Predictor.from_artifact(DEFAULT_MODEL_PATH).predict(x))
    fast = evaluate(y, Predictor.from_artifact(DEFAULT_MODEL_PATH, precision=precision).predict(x))
    assert abs(full.mean_average_precision - fast.mean_average_precision) < 0.002
    card = (Path(__file__).resolve().parent.parent / "docs" / "model-card.md").read_text(encoding="utf-8")
    assert f"+{precision}" in card, "the model card must quote each fast precision's validation mAP"


@pytest.fixture(scope="module")
def eval_half() -> tuple[np.ndarray, np.ndarray]:
    with h5py.File(data_dir() / "eval_half.h5", "r") as f:
        return f["x"][:], f["y"][:].astype(bool)


def test_shipped_model_on_real_eval_clips_at_the_default_precision(eval_half: tuple[np.ndarray, np.ndarray]) -> None:
    """The model card's eval_half figures, recomputed: float32 and int8 (what `auto` picks), within 0.002."""
    x, y = eval_half
    full = evaluate(y, Predictor.from_artifact(DEFAULT_MODEL_PATH).predict(x)).mean_average_precision
    fast = evaluate(y, Predictor.from_artifact(DEFAULT_MODEL_PATH, precision="int8").predict(x)).mean_average_precision
    assert abs(full - fast) < 0.002
    card = (Path(__file__).resolve().parent.parent / "docs" / "model-card.md").read_text(encoding="utf-8")
    assert f"**{full:.4f}**" in card, "the model card must quote the shipped model's eval_half mAP"
