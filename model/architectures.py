"""The five pooling architectures of Kong et al. 2018 / Yu et al. 2018.

Each takes ``(batch, frames, 128)`` float32 embeddings and returns clip-level
probabilities ``(batch, classes)``. They share the embedding mapping: three
dense blocks (Dense -> BatchNorm -> ReLU -> Dropout), applied per frame.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
from keras import layers

from model.attention_pooling import AttentionPooling, AveragePooling, MaxPooling

ARCHITECTURES = (
    "decision_level_max_pooling",
    "decision_level_average_pooling",
    "decision_level_single_attention",
    "decision_level_multi_attention",
    "feature_level_attention",
)
DEFAULT_ARCHITECTURE = "decision_level_multi_attention"
EMBEDDING_WIDTH = 128


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
) -> keras.Model:
    """Build an uncompiled Keras model of the named architecture."""
    builders: dict[str, Callable[[keras.KerasTensor, keras.KerasTensor, keras.KerasTensor], keras.KerasTensor]]
    inputs = keras.Input(shape=(frames, EMBEDDING_WIDTH), name="embeddings")
    a1 = _dense_block(inputs, hidden_units, dropout, "block1")
    a2 = _dense_block(a1, hidden_units, dropout, "block2")
    a3 = _dense_block(a2, hidden_units, dropout, "block3")

    def max_pooling(_a1: keras.KerasTensor, _a2: keras.KerasTensor, a3: keras.KerasTensor) -> keras.KerasTensor:
        cla = layers.Dense(classes, activation="sigmoid", name="cla")(a3)
        return MaxPooling(name="max_pool")(cla)

    def average_pooling(_a1: keras.KerasTensor, _a2: keras.KerasTensor, a3: keras.KerasTensor) -> keras.KerasTensor:
        cla = layers.Dense(classes, activation="sigmoid", name="cla")(a3)
        return AveragePooling(name="avg_pool")(cla)

    def single_attention(_a1: keras.KerasTensor, _a2: keras.KerasTensor, a3: keras.KerasTensor) -> keras.KerasTensor:
        return _attention_head(a3, classes, "head")

    def multi_attention(_a1: keras.KerasTensor, a2: keras.KerasTensor, a3: keras.KerasTensor) -> keras.KerasTensor:
        out1 = _attention_head(a2, classes, "head2")
        out2 = _attention_head(a3, classes, "head3")
        merged = layers.Concatenate(axis=-1, name="heads")([out1, out2])
        return layers.Dense(classes, activation="sigmoid", name="fusion")(merged)

    def feature_attention(_a1: keras.KerasTensor, _a2: keras.KerasTensor, a3: keras.KerasTensor) -> keras.KerasTensor:
        cla = layers.Dense(hidden_units, activation="linear", name="feat_cla")(a3)
        att = layers.Dense(hidden_units, activation="sigmoid", name="feat_att")(a3)
        pooled = AttentionPooling(name="feat_pool")([cla, att])
        pooled = layers.BatchNormalization(name="feat_bn")(pooled)
        pooled = layers.Activation("relu", name="feat_relu")(pooled)
        pooled = layers.Dropout(dropout, name="feat_dropout")(pooled)
        return layers.Dense(classes, activation="sigmoid", name="output")(pooled)

    builders = {
        "decision_level_max_pooling": max_pooling,
        "decision_level_average_pooling": average_pooling,
        "decision_level_single_attention": single_attention,
        "decision_level_multi_attention": multi_attention,
        "feature_level_attention": feature_attention,
    }
    if architecture not in builders:
        raise UnknownArchitectureError(
            f"unknown architecture {architecture!r}; choose one of: {', '.join(ARCHITECTURES)}"
        )
    outputs = builders[architecture](a1, a2, a3)
    return keras.Model(inputs, outputs, name=architecture)
