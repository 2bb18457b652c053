"""The shipped default model: it loads in safe mode, matches its manifest, and scores."""

from __future__ import annotations

import numpy as np

from audioset_batch.settings import DEFAULT_MODEL_PATH, load_settings
from model import artifact
from model.architectures import ARCHITECTURES
from model.inference import Predictor


def test_shipped_artifact_is_valid_and_small() -> None:
    manifest = artifact.verify(DEFAULT_MODEL_PATH)
    assert load_settings().model_path == DEFAULT_MODEL_PATH
    assert manifest.architecture in ARCHITECTURES and len(manifest.classes) == 527
    assert manifest.classes[0].name == "Speech" and manifest.classes[0].mid == "/m/09x0r"
    assert 0.2 < manifest.metrics["validation"]["mAP"] < 1
    assert manifest.training["data_fingerprint"] and manifest.training["hyperparameters"]
    # 1,536 units wide: 42 MB of float32 weights (the model card says why it is not 1,024 any more).
    assert (DEFAULT_MODEL_PATH / artifact.WEIGHTS_NAME).stat().st_size < 45 * 1024 * 1024


def test_shipped_model_scores_in_safe_mode() -> None:
    predictor = Predictor.from_artifact(DEFAULT_MODEL_PATH)
    x = np.random.default_rng(0).integers(0, 256, size=(3, 10, 128), dtype=np.uint8)
    scores = predictor.predict(x)
    assert scores.shape == (3, 527) and np.isfinite(scores).all() and (scores >= 0).all() and (scores <= 1).all()
