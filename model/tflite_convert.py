"""The serving graph as a TFLite flatbuffer: int8 weights (the int8 form's recipe) or float16 weights (the bfloat16
form's, which OpenVINO computes in bfloat16 on AMX).

Weights become int8 per output channel and activations are quantised per batch on the fly (dynamic-range
quantisation), so the dense layers — nearly all of the model's FLOPs — run on the CPU's int8 dot-product
instructions (AVX-512 VNNI, AVX-VNNI, AMX) through XNNPACK. Needs TensorFlow's converter: it runs when an
artifact is written, or at load for an artifact written before compiled forms existed.
"""

from __future__ import annotations

import contextlib
import io
import logging
from types import ModuleType
from typing import TYPE_CHECKING

from model.native_logs import import_tensorflow, native_stderr_silenced

if TYPE_CHECKING:
    import keras

log = logging.getLogger("audioset.model")


class ConverterUnavailableError(RuntimeError):
    """This TensorFlow build has no TFLite converter, so no int8 form can be made."""


def _has_converter(tf: ModuleType) -> bool:
    return hasattr(getattr(tf, "lite", None), "TFLiteConverter")


def converter_available() -> bool:
    try:
        return _has_converter(import_tensorflow())
    except ImportError:
        return False


def quantise(keras_model: keras.Model) -> bytes:
    """The model as a TFLite flatbuffer with int8 weights (dynamic-range quantisation)."""
    return _convert(keras_model, "int8")


def float16_weights(keras_model: keras.Model) -> bytes:
    """The model as a TFLite flatbuffer with float16 weights (half the size of float32; the runtime widens them)."""
    return _convert(keras_model, "float16")


def _convert(keras_model: keras.Model, weights: str) -> bytes:
    tf = import_tensorflow()
    if not _has_converter(tf):
        raise ConverterUnavailableError(f"this TensorFlow build has no tf.lite converter; {weights} cannot be compiled")
    converter = tf.lite.TFLiteConverter.from_keras_model(keras_model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if weights == "float16":
        converter.target_spec.supported_types = [tf.float16]
    # The converter exports a SavedModel first and prints its signature: keep stdout for results (`-o -`).
    with native_stderr_silenced(), contextlib.redirect_stdout(io.StringIO()) as exported:
        blob: bytes = converter.convert()
    log.debug("%s conversion: %s", weights, exported.getvalue().strip())
    return blob
