from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from model import artifact
from model.architectures import ARCHITECTURES, UnknownArchitectureError, branch_count, branch_outputs, build_model
from model.artifact_errors import ArtifactError, ArtifactIntegrityError
from model.inference import Predictor
from model.labels import LabelFileError, parse_labels
from model.metrics import d_prime, evaluate
from model.sampling import BalancedSampler, stratified_split
from tests.helpers import build_artifact, make_labels


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_architectures_output_probabilities(architecture: str) -> None:
    net = build_model(architecture, classes=7, hidden_units=16)
    out = np.asarray(net(np.random.default_rng(0).normal(size=(3, 10, 128)).astype(np.float32), training=False))
    assert out.shape == (3, 7)
    assert ((out >= 0) & (out <= 1)).all()


def test_architecture_has_three_dense_blocks_and_no_lambda() -> None:
    net = build_model("decision_level_multi_attention", classes=5, hidden_units=16)
    kinds = [type(layer).__name__ for layer in net.layers]
    assert kinds.count("BatchNormalization") == 3 and kinds.count("Dropout") == 3
    assert "Lambda" not in kinds and kinds.count("AttentionPooling") == 2


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_branches_serve_the_mean_of_independent_copies(architecture: str, tmp_path: Path) -> None:
    import keras

    net = build_model(architecture, classes=5, hidden_units=8, branches=3)
    assert branch_count(net) == 3
    per_branch = keras.Model(net.inputs[0], branch_outputs(net))
    x = np.random.default_rng(2).normal(size=(4, 10, 128)).astype(np.float32)
    outs = [np.asarray(o) for o in per_branch(x, training=False)]
    assert not np.allclose(outs[0], outs[1])  # separately initialised, not one shared net
    np.testing.assert_allclose(np.asarray(net(x, training=False)), np.mean(outs, axis=0), rtol=1e-5, atol=1e-6)
    manifest = artifact.Manifest(
        name="b", version="1", architecture=architecture, classes=make_labels(5), frames=10, branches=3
    )
    artifact.save(net, manifest, tmp_path / "m")
    loaded, loaded_manifest = artifact.load(tmp_path / "m")
    assert loaded_manifest.branches == 3 and branch_count(loaded) == 3
    assert "Lambda" not in {type(layer).__name__ for layer in loaded.layers}
    np.testing.assert_allclose(np.asarray(loaded(x, training=False)), np.mean(outs, axis=0), rtol=1e-5, atol=1e-6)


def test_one_branch_is_the_plain_architecture() -> None:
    net = build_model("feature_level_attention", classes=5, hidden_units=8)
    assert branch_count(net) == 1 and net.get_layer("output") is not None


def test_unknown_architecture() -> None:
    with pytest.raises(UnknownArchitectureError, match="choose one of"):
        build_model("transformer")


def test_artifact_roundtrip_in_safe_mode(tmp_path: Path) -> None:
    path = build_artifact(tmp_path / "m", classes=6, architecture="feature_level_attention")
    manifest = artifact.read_manifest(path)
    assert manifest.tag == "tiny@0" and len(manifest.classes) == 6 and len(manifest.sha256) == 64
    x = np.random.default_rng(1).integers(0, 256, size=(9, 10, 128), dtype=np.uint8)
    first = Predictor.from_artifact(path, batch_size=4).predict(x)
    second = Predictor.from_artifact(path, batch_size=100).predict(x)
    np.testing.assert_allclose(first, second, rtol=1e-5, atol=1e-6)
    assert first.shape == (9, 6)


def test_artifact_has_no_optimizer_state(tmp_path: Path) -> None:
    import io
    import zipfile

    import h5py
    import keras

    net = build_model("decision_level_single_attention", classes=3, hidden_units=8)
    net.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy")
    net.train_on_batch(np.zeros((2, 10, 128), np.float32), np.ones((2, 3), np.float32))
    manifest = artifact.Manifest(name="t", version="1", architecture="x", classes=make_labels(3), frames=10)
    artifact.save(net, manifest, tmp_path / "m")
    with zipfile.ZipFile(tmp_path / "m" / artifact.WEIGHTS_NAME) as archive:
        weights = h5py.File(io.BytesIO(archive.read("model.weights.h5")), "r")
        assert "optimizer" not in weights and "layers" in weights
    loaded, _ = artifact.load(tmp_path / "m")
    x = np.ones((1, 10, 128), np.float32)
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(net(x, training=False)), rtol=1e-6)


def test_tampered_artifact_is_refused(tmp_path: Path) -> None:
    path = build_artifact(tmp_path / "m", classes=4)
    weights = path / artifact.WEIGHTS_NAME
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ArtifactIntegrityError, match=r"does not match manifest"):
        artifact.load(path)


def test_malformed_manifest(tmp_path: Path) -> None:
    path = build_artifact(tmp_path / "m", classes=4)
    (path / artifact.MANIFEST_NAME).write_text(json.dumps({"format_version": 1}))
    with pytest.raises(ArtifactError, match="malformed manifest"):
        artifact.read_manifest(path)
    with pytest.raises(ArtifactError, match=r"no manifest\.json"):
        artifact.read_manifest(tmp_path)


def test_lambda_layers_are_refused_by_safe_mode(tmp_path: Path) -> None:
    import keras

    inputs = keras.Input(shape=(10, 128))
    outputs = keras.layers.Lambda(lambda t: t[:, 0, :4])(inputs)
    net = keras.Model(inputs, outputs)
    target = tmp_path / "evil"
    target.mkdir()
    net.save(target / artifact.WEIGHTS_NAME)  # a hand-made artifact with a valid manifest
    manifest = artifact.Manifest(
        name="evil",
        version="1",
        architecture="custom",
        classes=make_labels(4),
        frames=10,
        sha256=artifact.sha256_file(target / artifact.WEIGHTS_NAME),
    )
    (target / artifact.MANIFEST_NAME).write_text(json.dumps(manifest.to_json()))
    with pytest.raises(ArtifactError, match="Lambda"):  # every load failure is an ArtifactError
        artifact.load(tmp_path / "evil")


def test_metrics_match_hand_computed_values() -> None:
    labels = np.array([[1, 0], [0, 1], [1, 1], [0, 0]], dtype=bool)
    scores = np.array([[0.9, 0.2], [0.4, 0.3], [0.35, 0.8], [0.1, 0.1]])
    result = evaluate(labels, scores)
    # class 0: ranking 0.9(+) 0.4(-) 0.35(+) 0.1(-): AP = (1/1 + 2/3)/2, AUC = 3/4
    # class 1: ranking 0.8(+) 0.3(+) 0.2(-) 0.1(-): AP = 1, AUC = 1
    assert result.mean_average_precision == pytest.approx(((1 + 2 / 3) / 2 + 1) / 2)
    assert result.mean_auc == pytest.approx((0.75 + 1.0) / 2)
    assert result.d_prime == pytest.approx(math.sqrt(2) * 1.1503493803760079, rel=1e-6)  # Phi^-1(0.875)
    assert [m.positives for m in result.per_class] == [2, 2]


def test_metrics_skip_classes_without_positives() -> None:
    labels = np.array([[1, 0], [0, 0]], dtype=bool)
    result = evaluate(labels, np.array([[0.9, 0.5], [0.1, 0.4]]))
    assert result.classes_evaluated == 1 and result.per_class[1].average_precision is None
    assert result.mean_average_precision == 1.0


def test_d_prime_of_chance_is_zero() -> None:
    assert d_prime(0.5) == pytest.approx(0.0)


def test_balanced_sampler_covers_every_class() -> None:
    rng = np.random.default_rng(0)
    y = np.zeros((2000, 527), dtype=bool)
    y[np.arange(2000), rng.integers(0, 300, 2000)] = True  # common classes
    for c in range(300, 527):
        y[rng.integers(0, 2000), c] = True  # each rare class has a single clip
    sampler = BalancedSampler(y, batch_size=100, seed=0)
    assert sampler.batches_to_cover() == 6
    seen = np.zeros(527, dtype=bool)
    for _ in range(sampler.batches_to_cover()):
        seen |= y[next(sampler)].any(axis=0)
    assert seen[y.any(axis=0)].all() and y.any(axis=0).sum() > 500


def test_stratified_split_keeps_rare_classes_in_training() -> None:
    rng = np.random.default_rng(0)
    y = rng.random((1000, 20)) < 0.1
    train_idx, val_idx = stratified_split(y, 0.2, seed=0)
    assert len(set(train_idx) & set(val_idx)) == 0 and len(train_idx) + len(val_idx) == 1000
    assert 150 <= len(val_idx) <= 250
    assert (y[train_idx].sum(axis=0) > 0).all()
    np.testing.assert_array_equal(stratified_split(y, 0.2, seed=0)[1], val_idx)


def test_label_csv_parsing() -> None:
    labels = parse_labels('index,mid,display_name\n0,/m/a,"Dog, barking"\n1,/m/b,Cat\n')
    assert [(c.index, c.mid, c.name) for c in labels] == [(0, "/m/a", "Dog, barking"), (1, "/m/b", "Cat")]
    with pytest.raises(LabelFileError, match="expected index 1"):
        parse_labels("index,mid,display_name\n0,/m/a,A\n2,/m/b,B\n")
    with pytest.raises(LabelFileError, match="header"):
        parse_labels("a,b\n1,2\n")


def test_streamed_evaluation_gives_exactly_the_dense_figures_in_blocks() -> None:
    from model.metrics import StreamedEvaluation

    rng = np.random.default_rng(3)
    labels = rng.random((1000, 37)) < 0.1
    labels[:, 5] = False  # a class without positives is left out, as evaluate() does
    scores = rng.random((1000, 37)).astype(np.float32)
    dense = evaluate(labels, scores)
    with StreamedEvaluation(37, block_bytes=5 * 1000 * 4, read_rows=64) as streamed:  # 4 classes a block
        for start in range(0, 1000, 300):
            streamed.add(labels[start : start + 300], scores[start : start + 300])
        result = streamed.result()
    assert result.summary() == dense.summary() and result.per_class == dense.per_class
    assert result.per_class[5].average_precision is None and result.classes_evaluated == 36


def test_metrics_are_scikit_learn_s_to_the_last_digit_ties_included() -> None:
    """AP and AUC are computed in numpy (scikit-learn's per-call checks made a 527-class evaluation take seconds);
    they must stay scikit-learn's figures, with tied scores (quantised outputs tie often) counted its way."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    from model.metrics import area_under_roc, average_precision

    rng = np.random.default_rng(21)
    for trial in range(400):
        n = int(rng.integers(2, 200))
        truth = rng.random(n) < rng.random()
        truth[int(rng.integers(0, n))] = True
        levels = int(rng.integers(1, 30))
        scores = rng.integers(0, levels, n) / levels if trial % 2 else rng.random(n)
        assert average_precision(truth, scores) == pytest.approx(average_precision_score(truth, scores), abs=1e-12)
        if not truth.all():
            assert area_under_roc(truth, scores) == pytest.approx(roc_auc_score(truth, scores), abs=1e-12)
