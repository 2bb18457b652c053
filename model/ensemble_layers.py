"""How an ensemble's members' probabilities become one, as registered Keras layers (safe-mode loadable)."""

from __future__ import annotations

from typing import Any

from model.native_logs import import_tensorflow

import_tensorflow()  # quietly, before Keras below loads it

import keras  # noqa: E402
from keras import ops  # noqa: E402

_EPSILON = 1e-7


@keras.saving.register_keras_serializable(package="audioset")
class LogitMean(keras.layers.Layer):
    """``sigmoid(mean_i(logit(p_i)))``: the members' log-odds averaged, not their probabilities.

    Members trained differently are calibrated differently. Where scores are small (most classes of most
    clips) a probability mean follows whichever member scores higher; a log-odds mean weighs each member's
    odds alike. Computed in float32 whatever the layer's dtype policy, so
    a bfloat16 copy of the model cannot round ``1 - eps`` to 1 and take the log of zero.
    """

    def call(self, inputs: list[Any]) -> Any:
        logits = []
        for probabilities in inputs:
            p = ops.clip(ops.cast(probabilities, "float32"), _EPSILON, 1.0 - _EPSILON)
            logits.append(ops.log(p) - ops.log(1.0 - p))
        return ops.sigmoid(ops.mean(ops.stack(logits, axis=0), axis=0))

    def compute_output_shape(self, input_shape: list[tuple[int | None, ...]]) -> tuple[int | None, ...]:
        return input_shape[0]
