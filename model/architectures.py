"""The five pooling architectures of Kong et al. 2018 / Yu et al. 2018, and one of ours.

``frame_self_attention`` is feature-level attention with one self-attention
block across the 10 frames before pooling (Keras' own ``MultiHeadAttention``,
so artifacts still load in safe mode): each frame sees the rest of the clip
before the pooling weighs it.

Each takes ``(batch, frames, 128)`` float32 embeddings and returns clip-level
probabilities ``(batch, classes)``. They share the embedding mapping: three
dense blocks (Dense -> BatchNorm -> ReLU -> Dropout), applied per frame.

``branches=K`` builds K independent copies of the network side by side and
serves the mean of their probabilities (a built-in ``Average`` layer). Each
branch is trained on its own loss, so the branches behave like an ensemble of
K seeds; with ``hidden_units`` divided by about sqrt(K) the whole model costs
what one full-width network costs, so serving stays one model at one price.
"""

from __future__ import annotations

from model.native_logs import import_tensorflow

import_tensorflow()  # quietly, before Keras below loads it

import keras  # noqa: E402
from keras import layers  # noqa: E402

from model.attention_pooling import AttentionPooling, AveragePooling, MaxPooling  # noqa: E402
from model.choices import ARCHITECTURES as ARCHITECTURES  # noqa: E402  (re-exported)
from model.choices import DEFAULT_ARCHITECTURE as DEFAULT_ARCHITECTURE  # noqa: E402

EMBEDDING_WIDTH = 128


BRANCH_MEAN = "branch_mean"


class UnknownArchitectureError(ValueError):
    """The architecture name is not one of :data:`ARCHITECTURES`."""


def _dense_block(x: keras.KerasTensor, units: int, dropout: float, name: str) -> keras.KerasTensor:
    x = layers.Dense(units, name=f"{name}_dense")(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    x = layers.Activation("relu", name=f"{name}_relu")(x)
    return layers.Dropout(dropout, name=f"{name}_dropout")(x)


def _attention_head(x: keras.KerasTensor, classes: int, name: str) -> keras.KerasTensor:
    # The seed applies softmax over classes for the attention branch; we keep it
    # so trained weights and published numbers stay comparable.
    cla = layers.Dense(classes, activation="sigmoid", name=f"{name}_cla")(x)
    att = layers.Dense(classes, activation="softmax", name=f"{name}_att")(x)
    return AttentionPooling(name=f"{name}_pool")([cla, att])


def build_model(
    architecture: str = DEFAULT_ARCHITECTURE,
    classes: int = 527,
    frames: int = 10,
    hidden_units: int = 1024,
    dropout: float = 0.5,
    branches: int = 1,
) -> keras.Model:
    """Build an uncompiled Keras model of the named architecture (``branches`` side-by-side copies)."""
    if architecture not in ARCHITECTURES:
        raise UnknownArchitectureError(
            f"unknown architecture {architecture!r}; choose one of: {', '.join(ARCHITECTURES)}"
        )
    if branches < 1:
        raise ValueError(f"branches must be >= 1, got {branches}")
    inputs = keras.Input(shape=(frames, EMBEDDING_WIDTH), name="embeddings")
    if branches == 1:
        return keras.Model(inputs, _branch(inputs, architecture, classes, hidden_units, dropout, ""), name=architecture)
    outputs = [_branch(inputs, architecture, classes, hidden_units, dropout, f"b{k}_") for k in range(branches)]
    return keras.Model(inputs, layers.Average(name=BRANCH_MEAN)(outputs), name=architecture)


def branch_outputs(net: keras.Model) -> list[keras.KerasTensor]:
    """The per-branch probability tensors of a model (its single output when it has one branch)."""
    try:
        mean = net.get_layer(BRANCH_MEAN)
    except ValueError:
        return [net.outputs[0]]
    return list(mean.input)


def branch_count(net: keras.Model) -> int:
    return len(branch_outputs(net))


def _branch(
    inputs: keras.KerasTensor, architecture: str, classes: int, hidden_units: int, dropout: float, prefix: str
) -> keras.KerasTensor:
    a1 = _dense_block(inputs, hidden_units, dropout, f"{prefix}block1")
    a2 = _dense_block(a1, hidden_units, dropout, f"{prefix}block2")
    a3 = _dense_block(a2, hidden_units, dropout, f"{prefix}block3")
    if architecture == "decision_level_max_pooling":
        cla = layers.Dense(classes, activation="sigmoid", name=f"{prefix}cla")(a3)
        return MaxPooling(name=f"{prefix}max_pool")(cla)
    if architecture == "decision_level_average_pooling":
        cla = layers.Dense(classes, activation="sigmoid", name=f"{prefix}cla")(a3)
        return AveragePooling(name=f"{prefix}avg_pool")(cla)
    if architecture == "decision_level_single_attention":
        return _attention_head(a3, classes, f"{prefix}head")
    if architecture == "decision_level_multi_attention":
        out1 = _attention_head(a2, classes, f"{prefix}head2")
        out2 = _attention_head(a3, classes, f"{prefix}head3")
        merged = layers.Concatenate(axis=-1, name=f"{prefix}heads")([out1, out2])
        return layers.Dense(classes, activation="sigmoid", name=f"{prefix}fusion")(merged)
    if architecture == "frame_self_attention":
        context = layers.MultiHeadAttention(num_heads=4, key_dim=64, name=f"{prefix}frame_attention")(a3, a3)
        context = layers.Dropout(dropout, name=f"{prefix}frame_attention_dropout")(context)
        a3 = layers.Add(name=f"{prefix}frame_residual")([a3, context])
        a3 = layers.LayerNormalization(name=f"{prefix}frame_norm")(a3)
    # feature_level_attention (and frame_self_attention from here on)
    cla = layers.Dense(hidden_units, activation="linear", name=f"{prefix}feat_cla")(a3)
    att = layers.Dense(hidden_units, activation="sigmoid", name=f"{prefix}feat_att")(a3)
    pooled = AttentionPooling(name=f"{prefix}feat_pool")([cla, att])
    pooled = layers.BatchNormalization(name=f"{prefix}feat_bn")(pooled)
    pooled = layers.Activation("relu", name=f"{prefix}feat_relu")(pooled)
    pooled = layers.Dropout(dropout, name=f"{prefix}feat_dropout")(pooled)
    return layers.Dense(classes, activation="sigmoid", name=f"{prefix}output")(pooled)
