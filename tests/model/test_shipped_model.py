"""The shipped default model: it loads in safe mode, matches its manifest, and scores."""

from __future__ import annotations

import numpy as np

from audioset_batch.settings import DEFAULT_MODEL_PATH, load_settings
from model import artifact
from model.architectures import ARCHITECTURES
from model.ensemble import ENSEMBLE
from model.inference import Predictor
from tests.helpers import auto_serves


def test_shipped_artifact_is_valid_and_small() -> None:
    manifest = artifact.verify(DEFAULT_MODEL_PATH)
    assert load_settings().model_path == DEFAULT_MODEL_PATH
    assert manifest.architecture == ENSEMBLE and len(manifest.classes) == 527
    assert manifest.classes[0].name == "Speech" and manifest.classes[0].mid == "/m/09x0r"
    assert 0.2 < manifest.metrics["validation"]["mAP"] < 1
    members = manifest.training["members"]
    assert [m["architecture"] for m in members] == ["feature_level_attention", "decision_level_multi_attention"]
    for member in members:  # each member's recipe is on record
        assert member["training"]["data_fingerprint"] and member["training"]["hyperparameters"]
        assert member["architecture"] in ARCHITECTURES and member["sha256"]
    # @3 (1,536 units, 42 MB) and a 512-wide member (9 MB) in float32; the model card says why two.
    assert (DEFAULT_MODEL_PATH / artifact.WEIGHTS_NAME).stat().st_size < 52 * 1024 * 1024
    form = artifact.check_artifact(DEFAULT_MODEL_PATH).compiled["int8"]  # served without TensorFlow, gated
    assert form["bytes"] < 12 * 1024 * 1024 and form["gate"]["passed"] and form["gate"]["clips"] == 10257
    assert form["frames"]["bytes"] < 12 * 1024 * 1024  # its twin with per-frame evidence, for event edges
    bfloat16 = artifact.check_artifact(DEFAULT_MODEL_PATH).compiled["bfloat16"]  # OpenVINO's, for AMX
    assert bfloat16["bytes"] < 16 * 1024 * 1024 and bfloat16["runtime"] == "OpenVINO"
    assert bfloat16["gate"]["passed"] and bfloat16["gate"]["data"].startswith("eval_half.h5")


def test_shipped_model_scores_in_safe_mode() -> None:
    predictor = Predictor.from_artifact(DEFAULT_MODEL_PATH)
    served = Predictor.from_artifact(DEFAULT_MODEL_PATH, precision="auto")
    assert served.runtime == auto_serves()[1] and served.frame_evidence  # the decision-level member's frames
    x = np.random.default_rng(0).integers(0, 256, size=(3, 10, 128), dtype=np.uint8)
    scores = predictor.predict(x)
    assert scores.shape == (3, 527) and np.isfinite(scores).all() and (scores >= 0).all() and (scores <= 1).all()
