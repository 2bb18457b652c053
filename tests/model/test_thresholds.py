"""Per-class thresholds: the rule, its cross-fitted figures, and where the model keeps them."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from model import thresholds
from model.artifact import read_manifest, write_thresholds
from model.artifact_errors import ArtifactError


def separable(clips: int = 4000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Class 0 present where its score is above 0.7, class 1 above 0.2; class 2 has 3 positives in noise."""
    rng = np.random.default_rng(seed)
    scores = rng.random((clips, 3)).astype(np.float32)
    labels = np.stack([scores[:, 0] > 0.7, scores[:, 1] > 0.2, np.zeros(clips, dtype=bool)], axis=1)
    labels[:3, 2] = True
    return scores, labels


def test_each_class_gets_the_threshold_that_separates_it_and_a_rare_class_nearly_the_shared_one() -> None:
    scores, labels = separable()
    chosen = thresholds.choose(scores, labels)
    shared = thresholds.shared_threshold(scores, labels)
    assert abs(chosen[0] - 0.71) < 0.02 and abs(chosen[1] - 0.21) < 0.02
    assert abs(chosen[2] - shared) <= 3 / (3 + thresholds.SHRINK) + 1e-6  # 3 positives: within 3/23 of shared
    learnable = thresholds.measure(scores[:, :2], labels[:, :2], chosen[:2])
    everything = thresholds.measure(scores, labels, chosen)
    assert learnable["micro"].f1 > 0.98 and everything["macro"].f1 < learnable["macro"].f1  # class 2 is noise


def test_cross_fitted_figures_are_measured_on_the_half_that_did_not_choose() -> None:
    scores, labels = separable()
    labels[:, 0] = np.random.default_rng(1).random(len(labels)) < 0.5  # class 0 is now noise
    fitted = thresholds.cross_fit(scores, labels)
    in_sample = thresholds.measure(scores, labels, thresholds.choose(scores, labels))
    assert set(fitted) == {"micro", "macro"} and fitted["macro"]["f1"] <= in_sample["macro"].f1 + 1e-9


def test_the_manifest_keeps_thresholds_and_refuses_a_wrong_count(tiny_model: Path, tmp_path: Path) -> None:
    model = tmp_path / "m"
    shutil.copytree(tiny_model, model)
    classes = len(read_manifest(model).classes)
    scores, labels = (
        np.random.default_rng(0).random((400, classes)),
        np.random.default_rng(1).random((400, classes)) < 0.3,
    )
    write_thresholds(model, thresholds.calibration(scores, labels, "test data"))
    kept = read_manifest(model)
    assert kept.threshold_values is not None and len(kept.threshold_values) == classes
    assert kept.thresholds["rule"] == thresholds.RULE and kept.thresholds["data"] == "test data"
    with pytest.raises(ArtifactError, match="one value in"):
        write_thresholds(model, {"values": [0.5] * (classes - 1)})
    assert thresholds.digest(kept.threshold_values) == thresholds.digest(list(kept.threshold_values))
    assert thresholds.digest(None) is None
