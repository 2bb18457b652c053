"""Training losses beyond Keras' own, as registered (safe-mode loadable) classes.

AudioSet's labels miss many sounds that are present, so a clip's 520-odd negative
targets include some that are wrong. Binary cross-entropy pushes all of them towards
zero with full force. The asymmetric loss of Ridnik et al. (2021) weakens that push:
the negatives' term is focused (``p ** gamma`` down-weights the easy, low-scored
negatives that dominate the sum) and shifted (a negative scored below ``clip`` costs
nothing), and the gradient of a negative scored very high falls again, so a likely
missing label is not forced down. Positives keep plain cross-entropy.

A target below 0 is unknown (a likely missing label, ``model.soft_targets.likely_missing``)
and costs nothing in either loss; the mean over classes keeps its denominator, so
leaving a few targets out does not rescale the rest.
"""

from __future__ import annotations

from typing import Any

from model.native_logs import import_tensorflow

import_tensorflow()  # quietly, before Keras below loads it

import keras  # noqa: E402
from keras import ops  # noqa: E402

_EPSILON = 1e-7


def _known(y_true: Any) -> tuple[Any, Any]:
    """(1 where the target is known, else 0; the targets with the unknown ones at 0)."""
    t = ops.cast(y_true, "float32")
    return ops.cast(t >= 0.0, "float32"), ops.maximum(t, 0.0)


@keras.saving.register_keras_serializable(package="audioset")
class MaskedBinaryCrossentropy(keras.losses.Loss):
    """Binary cross-entropy averaged over classes, where an unknown target (below 0) costs nothing."""

    def __init__(self, name: str = "masked_binary_crossentropy", **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)

    def call(self, y_true: Any, y_pred: Any) -> Any:
        known, t = _known(y_true)
        p = ops.clip(ops.cast(y_pred, "float32"), _EPSILON, 1.0 - _EPSILON)
        return -ops.mean(known * (t * ops.log(p) + (1.0 - t) * ops.log(1.0 - p)), axis=-1)


@keras.saving.register_keras_serializable(package="audioset")
class AsymmetricLoss(keras.losses.Loss):
    """``-[t log p + (1 - t) p_m^gamma log(1 - p_m)]`` with ``p_m = max(p - clip, 0)``, averaged over classes.

    ``t`` may be a soft target (distillation, splicing): the loss is linear in it, as
    cross-entropy is. With ``gamma=0`` and ``clip=0`` it is binary cross-entropy.
    """

    def __init__(self, gamma: float = 4.0, clip: float = 0.05, name: str = "asymmetric_loss", **kwargs: Any) -> None:
        super().__init__(name=name, **kwargs)
        self.gamma = float(gamma)
        self.clip = float(clip)

    def call(self, y_true: Any, y_pred: Any) -> Any:
        known, t = _known(y_true)
        p = ops.clip(ops.cast(y_pred, "float32"), _EPSILON, 1.0 - _EPSILON)
        shifted = ops.maximum(p - self.clip, 0.0)
        positive = t * ops.log(p)
        negative = (1.0 - t) * ops.power(shifted, self.gamma) * ops.log(ops.maximum(1.0 - shifted, _EPSILON))
        return -ops.mean(known * (positive + negative), axis=-1)

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "gamma": self.gamma, "clip": self.clip}
