"""The one inference path shared by the worker, ``audioset score`` and ``audioset evaluate``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from model.artifact import Manifest, load

if TYPE_CHECKING:
    import keras


def dequantize(x: np.ndarray) -> np.ndarray:
    """uint8 embeddings -> float32 in [-1, 1): ``(x - 128) / 128``. Float input passes through."""
    if x.dtype == np.uint8:
        out = x.astype(np.float32)
        out -= 128.0
        out *= 1.0 / 128.0
        return out
    return np.asarray(x, dtype=np.float32)


class Predictor:
    """A loaded model wrapped in a traced inference function.

    Tracing once with a ``None`` batch dimension avoids Keras ``predict``'s
    per-call overhead and retracing on the last, shorter batch.
    """

    def __init__(self, keras_model: keras.Model, manifest: Manifest, batch_size: int = 1024) -> None:
        import tensorflow as tf

        self.model = keras_model
        self.manifest = manifest
        self.batch_size = batch_size
        self.frames = int(keras_model.input_shape[1])
        signature = [tf.TensorSpec(shape=(None, self.frames, 128), dtype=tf.float32)]
        self._forward: Any = tf.function(lambda x: keras_model(x, training=False), input_signature=signature)

    @classmethod
    def from_artifact(cls, artifact: str | Path, batch_size: int = 1024) -> Predictor:
        keras_model, manifest = load(artifact)
        return cls(keras_model, manifest, batch_size=batch_size)

    @property
    def classes(self) -> int:
        return len(self.manifest.classes)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Probabilities ``(clips, classes)`` float32 for uint8 or float embeddings."""
        if x.shape[0] == 0:
            return np.zeros((0, self.classes), dtype=np.float32)
        outputs = []
        for start in range(0, x.shape[0], self.batch_size):
            batch = dequantize(x[start : start + self.batch_size])
            outputs.append(np.asarray(self._forward(batch)))
        return np.concatenate(outputs, axis=0)
