from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from model.architectures import ARCHITECTURES, build_model
from model.artifact import load, read_manifest, save
from model.ensemble import combine
from model.inference import Predictor, dequantize, with_precision
from model.serving_graph import FrameDense, serving_graph
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


def _frame_dense(net: object) -> tuple[int, int]:
    """(FrameDense layers, plain Dense layers on frames) in a model and its members."""
    import keras

    assert isinstance(net, keras.Model)
    counts = [0, 0]
    for layer in net.layers:
        if isinstance(layer, keras.Model):
            counts = [a + b for a, b in zip(counts, _frame_dense(layer), strict=True)]
        elif isinstance(layer, keras.layers.Dense) and len(layer.input.shape) == 3:
            counts[0 if isinstance(layer, FrameDense) else 1] += 1
    return counts[0], counts[1]


X = np.random.default_rng(0).normal(0, 0.5, (48, 10, 128)).astype(np.float32)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_folding_keeps_every_architectures_predictions_and_leaves_only_unfoldable_batch_norms(
    architecture: str,
) -> None:
    net = build_model(architecture, classes=7, hidden_units=16, branches=2)
    _trained_statistics(net, seed=1)
    folded = serving_graph(net)
    np.testing.assert_allclose(folded(X, training=False), net(X, training=False), atol=2e-6)
    # Feature-level pooling is followed by a batch norm with no Dense before it: that one stays, per branch.
    kept = 2 if architecture in ("feature_level_attention", "frame_self_attention") else 0
    assert (_batch_norms(net), _batch_norms(folded)) == (kept + 6, kept)
    per_frame = _frame_dense(net)[1]
    assert per_frame >= 6 and _frame_dense(folded) == (per_frame, 0)  # every per-frame Dense is one 2-D product


def test_an_ensembles_members_are_folded_inside_it() -> None:
    members = [build_model(a, classes=7, hidden_units=16) for a in ("decision_level_multi_attention", ARCHITECTURES[4])]
    for seed, member in enumerate(members):
        _trained_statistics(member, seed)
    ensemble = combine(members, method="logit-mean")
    folded = serving_graph(ensemble)
    np.testing.assert_allclose(folded(X, training=False), ensemble(X, training=False), atol=2e-6)
    assert (_batch_norms(ensemble), _batch_norms(folded)) == (7, 1)


def test_a_dense_layer_feeding_more_than_the_batch_norm_or_with_an_activation_keeps_its_batch_norm() -> None:
    import keras

    def build(shape: tuple[int, ...]) -> keras.Model:
        inputs = keras.Input(shape)
        shared = keras.layers.Dense(8, name="shared")(inputs)
        normed = keras.layers.BatchNormalization(name="shared_bn")(shared)
        activated = keras.layers.Dense(8, activation="relu", name="activated")(inputs)
        after_relu = keras.layers.BatchNormalization(name="after_relu_bn")(activated)
        net = keras.Model(inputs, keras.layers.Concatenate()([normed, after_relu, shared]))
        _trained_statistics(net, seed=3)
        return net

    clips = build((128,))
    assert serving_graph(clips) is clips  # nothing to fold or flatten: the model itself, not a copy
    frames = build((10, 128))
    served = serving_graph(frames)
    assert _batch_norms(served) == 2 and _frame_dense(served) == (2, 0)
    np.testing.assert_allclose(served(X, training=False), frames(X, training=False), atol=2e-6)


@pytest.mark.parametrize("variant", ["lora", "int8"])
def test_a_dense_layer_with_lora_or_quantized_weights_is_left_as_it_is(variant: str) -> None:
    import keras

    inputs = keras.Input((10, 128))
    special = keras.layers.Dense(8, name="special")
    normed = keras.layers.BatchNormalization(name="special_bn")(special(inputs))
    plain = keras.layers.Dense(8, name="plain")(inputs)
    net = keras.Model(inputs, keras.layers.Concatenate()([normed, plain]))
    _trained_statistics(net, seed=4)
    if variant == "lora":
        special.enable_lora(2)
        down, up = special.lora_kernel_a, special.lora_kernel_b
        up.assign(np.random.default_rng(5).normal(0, 1, up.shape).astype(np.float32))
        assert float(np.abs(down.numpy() @ up.numpy()).max()) > 0.1  # the adapter changes the output
    else:
        special.quantize("int8")
    served = serving_graph(net)
    assert _batch_norms(served) == 1 and _frame_dense(served) == (1, 1)  # only the plain Dense is rewritten
    np.testing.assert_allclose(served(X, training=False), net(X, training=False), atol=2e-5)


def test_an_artifact_is_served_folded_with_the_same_predictions(tmp_path: Path) -> None:
    net, manifest = load(build_artifact(tmp_path / "fresh", architecture="feature_level_attention"))
    _trained_statistics(net, seed=4)
    save(net, manifest, tmp_path / "trained")
    served = Predictor.from_artifact(tmp_path / "trained")
    as_saved = Predictor.from_keras(*load(tmp_path / "trained"))
    x = np.random.default_rng(5).integers(0, 256, (40, 10, 128), dtype=np.uint8)
    np.testing.assert_allclose(served.predict(x), as_saved.predict(x), atol=2e-6)
    assert (_batch_norms(as_saved.model), _batch_norms(served.model)) == (4, 1)
    assert served.tag == read_manifest(tmp_path / "trained").tag  # the same model, served faster
    bfloat16 = with_precision(served.model, "bfloat16")  # the precisions are built from the served graph
    assert np.abs(np.asarray(bfloat16(dequantize(x)), dtype=np.float32) - as_saved.predict(x)).max() < 0.05
    int8 = Predictor.from_artifact(tmp_path / "trained", precision="int8")
    assert int8.model is not None and _batch_norms(int8.model) == 1  # what was quantised
    assert np.abs(int8.predict(x) - as_saved.predict(x)).max() < 0.02
