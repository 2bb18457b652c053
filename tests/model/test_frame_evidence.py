"""Per-frame evidence: the served model with each frame's probabilities beside the clip's, found from the graph,
the clip output untouched, carried by the compiled form's twin and served to recordings only."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from model.architectures import build_model
from model.artifact import MANIFEST_NAME, check_artifact, read_manifest
from model.artifact_errors import ArtifactError, ArtifactIntegrityError
from model.compiled_forms import FRAME_FORM_FILES
from model.ensemble import combine
from model.form_builder import add_forms
from model.frame_evidence import with_frame_evidence
from model.inference import Predictor, dequantize
from model.serving_graph import serving_graph
from tests.helpers import build_artifact, flip_a_byte

X = np.random.default_rng(5).integers(0, 256, size=(24, 10, 128), dtype=np.uint8)


def outputs(net: object, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    clip, frames = net(dequantize(x), training=False)  # type: ignore[operator]
    return np.asarray(clip), np.asarray(frames)


@pytest.mark.parametrize(
    "architecture",
    [
        "decision_level_max_pooling",
        "decision_level_average_pooling",
        "decision_level_single_attention",
        "decision_level_multi_attention",
    ],
)
def test_decision_level_networks_give_each_frame_s_probabilities_and_keep_their_clip_output(
    architecture: str,
) -> None:
    net = serving_graph(build_model(architecture, classes=6, hidden_units=16, dropout=0.0))
    with_frames = with_frame_evidence(net)
    assert with_frames is not None
    clip, frames = outputs(with_frames, X)
    assert frames.shape == (24, 10, 6) and ((frames >= 0) & (frames <= 1)).all()
    np.testing.assert_allclose(clip, np.asarray(net(dequantize(X), training=False)), atol=1e-6)
    if architecture == "decision_level_max_pooling":  # the clip is its frames' maximum
        np.testing.assert_allclose(clip, frames.max(axis=1), atol=1e-6)
    if architecture == "decision_level_average_pooling":
        np.testing.assert_allclose(clip, frames.mean(axis=1), atol=1e-6)
    if architecture == "decision_level_multi_attention":  # fusion over the heads' per-frame values: not a head's
        assert np.abs(frames - frames.mean(axis=1, keepdims=True)).max() > 0


def test_feature_level_networks_have_no_evidence_and_an_ensemble_takes_its_members_evidence() -> None:
    fla = build_model("feature_level_attention", classes=6, hidden_units=16, dropout=0.0)
    mla = build_model("decision_level_multi_attention", classes=6, hidden_units=16, dropout=0.0)
    mla._name = "mla"
    assert with_frame_evidence(fla) is None
    ensemble = combine([fla, mla])
    with_frames = with_frame_evidence(ensemble)
    assert with_frames is not None
    clip, frames = outputs(with_frames, X)
    np.testing.assert_allclose(clip, np.asarray(ensemble(dequantize(X), training=False)), atol=1e-6)
    member = with_frame_evidence(mla)
    assert member is not None
    np.testing.assert_allclose(frames, outputs(member, X)[1], atol=1e-6)  # the only member with evidence
    fla2 = build_model("feature_level_attention", classes=6, hidden_units=16, dropout=0.0)
    fla2._name = "fla2"
    assert with_frame_evidence(combine([fla, fla2])) is None


def test_the_compiled_form_has_a_twin_with_evidence_that_agrees_with_float32(compiled: Path) -> None:
    twin = read_manifest(compiled).compiled["int8"]["frames"]
    assert twin["file"] == FRAME_FORM_FILES["int8"] and twin["bytes"] == (compiled / twin["file"]).stat().st_size
    assert 0 <= twin["clip_output_difference"] <= 1e-4
    fast = Predictor.from_artifact(compiled, precision="int8", batch_size=16)
    reference = Predictor.from_artifact(compiled, precision="float32", batch_size=16)
    assert fast.frame_evidence and reference.frame_evidence
    scores, frames = fast.predict_frames(X)
    assert frames is not None and frames.shape == (24, 10, 12)
    np.testing.assert_allclose(scores, fast.predict(X), atol=1e-4)  # the twin's clip output is the form's
    expected_scores, expected = reference.predict_frames(X)
    assert expected is not None
    np.testing.assert_allclose(expected_scores, reference.predict(X), atol=1e-6)
    assert np.abs(frames - expected).max() < 0.02  # int8 weights against float32
    empty_scores, empty = fast.predict_frames(X[:0])
    assert empty_scores.shape == (0, 12) and empty is not None and empty.shape == (0, 10, 12)


def test_a_network_without_evidence_scores_recordings_from_its_windows(tmp_path: Path) -> None:
    model = build_artifact(tmp_path / "fla", architecture="feature_level_attention", name="fla")
    add_forms(model)
    assert "frames" not in read_manifest(model).compiled["int8"]
    for precision in ("int8", "float32"):
        predictor = Predictor.from_artifact(model, precision=precision)
        scores, frames = predictor.predict_frames(X)
        assert not predictor.frame_evidence and frames is None and scores.shape == (24, 12)


def test_a_modified_or_misnamed_twin_is_refused(compiled: Path, tmp_path: Path) -> None:
    model = Path(shutil.copytree(compiled, tmp_path / "copy"))
    twin = model / FRAME_FORM_FILES["int8"]
    flip_a_byte(twin)
    with pytest.raises(ArtifactIntegrityError, match="does not match the manifest's"):
        check_artifact(model)  # what a worker's parent checks before forking
    predictor = Predictor.from_artifact(model, precision="int8")  # clips are served: the twin is read on first use
    with pytest.raises(ArtifactIntegrityError, match="does not match the manifest's"):
        predictor.predict_frames(X)
    data = json.loads((model / MANIFEST_NAME).read_text())
    data["compiled"]["int8"]["frames"]["file"] = "../model.int8.tflite"
    (model / MANIFEST_NAME).write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match=r"frames twin must be the file 'model\.int8\.frames\.tflite'"):
        read_manifest(model)
