from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from model.architectures import ARCHITECTURES, build_model
from model.artifact import load, read_manifest, save
from model.batch_norm_folding import fold_batch_norm
from model.ensemble import combine
from model.inference import Predictor
from tests.helpers import build_artifact

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _batch_norms(net: object) -> int:
    import keras

    assert isinstance(net, keras.Model)
    return sum(
        _batch_norms(layer) if isinstance(layer, keras.Model) else isinstance(layer, keras.layers.BatchNormalization)
        for layer in net.layers
    )


def _trained_statistics(net: object, seed: int) -> None:
    """Batch norms as training leaves them (not the identity of a fresh layer), so folding has work to do."""
    import keras

    assert isinstance(net, keras.Model)
    rng = np.random.default_rng(seed)
    for layer in net.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, variance = layer.get_weights()
            layer.set_weights(
                [
                    rng.uniform(0.5, 2, gamma.shape).astype(np.float32),
                    rng.normal(0, 1, beta.shape).astype(np.float32),
                    rng.normal(0, 1, mean.shape).astype(np.float32),
                    rng.uniform(0.2, 3, variance.shape).astype(np.float32),
                ]
            )


X = np.random.default_rng(0).normal(0, 0.5, (48, 10, 128)).astype(np.float32)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_folding_keeps_every_architectures_predictions_and_leaves_only_unfoldable_batch_norms(
    architecture: str,
) -> None:
    net = build_model(architecture, classes=7, hidden_units=16, branches=2)
    _trained_statistics(net, seed=1)
    folded = fold_batch_norm(net)
    np.testing.assert_allclose(folded(X, training=False), net(X, training=False), atol=2e-6)
    # Feature-level pooling is followed by a batch norm with no Dense before it: that one stays, per branch.
    kept = 2 if architecture in ("feature_level_attention", "frame_self_attention") else 0
    assert (_batch_norms(net), _batch_norms(folded)) == (kept + 6, kept)


def test_an_ensembles_members_are_folded_inside_it() -> None:
    members = [build_model(a, classes=7, hidden_units=16) for a in ("decision_level_multi_attention", ARCHITECTURES[4])]
    for seed, member in enumerate(members):
        _trained_statistics(member, seed)
    ensemble = combine(members, method="logit-mean")
    folded = fold_batch_norm(ensemble)
    np.testing.assert_allclose(folded(X, training=False), ensemble(X, training=False), atol=2e-6)
    assert (_batch_norms(ensemble), _batch_norms(folded)) == (7, 1)


def test_a_dense_layer_feeding_more_than_the_batch_norm_or_with_an_activation_is_left_alone() -> None:
    import keras

    inputs = keras.Input((10, 128))
    shared = keras.layers.Dense(8, name="shared")(inputs)
    normed = keras.layers.BatchNormalization(name="shared_bn")(shared)
    activated = keras.layers.Dense(8, activation="relu", name="activated")(inputs)
    after_relu = keras.layers.BatchNormalization(name="after_relu_bn")(activated)
    net = keras.Model(inputs, keras.layers.Concatenate()([normed, after_relu, shared]))
    _trained_statistics(net, seed=3)
    assert fold_batch_norm(net) is net  # nothing to fold: the model itself, not a copy


def test_an_artifact_is_served_folded_with_the_same_predictions(tmp_path: Path) -> None:
    net, manifest = load(build_artifact(tmp_path / "fresh", architecture="feature_level_attention"))
    _trained_statistics(net, seed=4)
    save(net, manifest, tmp_path / "trained")
    served = Predictor.from_artifact(tmp_path / "trained")
    as_saved = Predictor(*load(tmp_path / "trained"))
    x = np.random.default_rng(5).integers(0, 256, (40, 10, 128), dtype=np.uint8)
    np.testing.assert_allclose(served.predict(x), as_saved.predict(x), atol=2e-6)
    assert (_batch_norms(as_saved.model), _batch_norms(served.model)) == (4, 1)
    assert served.tag == read_manifest(tmp_path / "trained").tag  # the same model, served faster
    int8 = Predictor.from_artifact(tmp_path / "trained", precision="int8")
    assert int8.model is not None and _batch_norms(int8.model) == 1  # what was quantised
    assert np.abs(int8.predict(x) - as_saved.predict(x)).max() < 0.02
