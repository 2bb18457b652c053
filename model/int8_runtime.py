"""int8 inference: the Keras model converted in memory to a dynamic-range quantised TFLite model.

Weights become int8 per output channel and activations are quantised per batch on
the fly, so the dense layers — nearly all of the model's FLOPs — run on the CPU's
int8 dot-product instructions (AVX-512 VNNI, AVX-VNNI) through XNNPACK. The
conversion runs at load time from the verified Keras artifact, so there is still
one artifact, nothing extra is stored and nothing is downloaded.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np

from model.native_logs import import_tensorflow, native_stderr_silenced

if TYPE_CHECKING:
    import keras

log = logging.getLogger("audioset.model")
INT8_CPU_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


class Int8UnavailableError(RuntimeError):
    """This TensorFlow build has no TFLite converter/interpreter, so int8 cannot run."""


def _interpreter_class() -> Any:
    import_tensorflow()
    import tensorflow as tf

    lite = getattr(tf, "lite", None)
    if lite is None or not hasattr(lite, "Interpreter") or not hasattr(lite, "TFLiteConverter"):
        raise Int8UnavailableError("this TensorFlow build has no tf.lite converter/interpreter; use float32")
    return lite.Interpreter


def runtime_available() -> bool:
    try:
        _interpreter_class()
    except (Int8UnavailableError, ImportError):
        return False
    return True


def quantise(keras_model: keras.Model) -> bytes:
    """The model as a TFLite flatbuffer with int8 weights (dynamic-range quantisation)."""
    import_tensorflow()
    import tensorflow as tf

    _interpreter_class()
    converter = tf.lite.TFLiteConverter.from_keras_model(keras_model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    # The converter exports a SavedModel first and prints its signature: keep stdout for results (`-o -`).
    with native_stderr_silenced(), contextlib.redirect_stdout(io.StringIO()) as exported:
        blob: bytes = converter.convert()
    log.debug("int8 conversion: %s", exported.getvalue().strip())
    return blob


class Int8Forward:
    """Runs a quantised model; resizes its batch dimension only when the batch size changes.

    An interpreter is not thread-safe: one instance per process (the worker's
    Predictor), called from one thread at a time.
    """

    def __init__(self, keras_model: keras.Model, threads: int) -> None:
        interpreter_class = _interpreter_class()
        self.flatbuffer = quantise(keras_model)
        with warnings.catch_warnings(), native_stderr_silenced():  # the LiteRT notice, the XNNPACK line
            warnings.simplefilter("ignore")
            self._interpreter = interpreter_class(model_content=self.flatbuffer, num_threads=max(1, threads))
        self._input = self._interpreter.get_input_details()[0]["index"]
        self._output = self._interpreter.get_output_details()[0]["index"]
        self._frames = int(keras_model.input_shape[1])
        self._batch = -1

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        if batch.shape[0] != self._batch:
            self._interpreter.resize_tensor_input(self._input, [batch.shape[0], self._frames, 128])
            with native_stderr_silenced():  # the first allocation applies XNNPACK, which says so on fd 2
                self._interpreter.allocate_tensors()
            self._batch = batch.shape[0]
        self._interpreter.set_tensor(self._input, np.ascontiguousarray(batch, dtype=np.float32))
        self._interpreter.invoke()
        return np.array(self._interpreter.get_tensor(self._output), dtype=np.float32)
