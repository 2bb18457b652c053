"""Attention pooling over time, as a registered Keras layer.

A registered layer (not a ``Lambda``) lets artifacts load with ``safe_mode=True``:
Keras rebuilds it from its class name instead of unpickling Python bytecode.
"""

from __future__ import annotations

from typing import Any

from model.native_logs import import_tensorflow

import_tensorflow()  # quietly, before Keras below loads it

import keras  # noqa: E402
from keras import ops  # noqa: E402

_EPSILON = 1e-7


@keras.saving.register_keras_serializable(package="audioset")
class AttentionPooling(keras.layers.Layer):
    """Weighted mean over axis 1: ``sum_t(values * att) / sum_t(att)``.

    The attention is clipped to ``[eps, 1 - eps]`` before normalising, as in
    Kong et al. 2018, so no frame's weight is ever exactly zero.
    """

    def call(self, inputs: list[Any]) -> Any:
        values, attention = inputs
        attention = ops.clip(attention, _EPSILON, 1.0 - _EPSILON)
        normalised = attention / ops.sum(attention, axis=1, keepdims=True)
        return ops.sum(values * normalised, axis=1)

    def compute_output_shape(self, input_shape: list[tuple[int | None, ...]]) -> tuple[int | None, ...]:
        values_shape = input_shape[0]
        return (values_shape[0], values_shape[2])


@keras.saving.register_keras_serializable(package="audioset")
class MaxPooling(keras.layers.Layer):
    """Maximum over axis 1 (time)."""

    def call(self, inputs: Any) -> Any:
        return ops.max(inputs, axis=1)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return (input_shape[0], input_shape[2])


@keras.saving.register_keras_serializable(package="audioset")
class AveragePooling(keras.layers.Layer):
    """Mean over axis 1 (time)."""

    def call(self, inputs: Any) -> Any:
        return ops.mean(inputs, axis=1)

    def compute_output_shape(self, input_shape: tuple[int | None, ...]) -> tuple[int | None, ...]:
        return (input_shape[0], input_shape[2])
