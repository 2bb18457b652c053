"""The one inference path shared by the worker, ``audioset score`` and ``audioset evaluate``."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from model.artifact import Manifest, load
from model.choices import PRECISIONS
from model.native_logs import import_tensorflow

if TYPE_CHECKING:
    import keras

log = logging.getLogger("audioset.model")
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


class PrecisionUnavailableError(ValueError):
    """A fast precision was asked for explicitly where it cannot run (CPU or TensorFlow build)."""


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8")
    except OSError:
        return set()
    return {flag for line in text.splitlines() if line.startswith("flags") for flag in line.split(":", 1)[1].split()}


def cpu_supports_bfloat16() -> bool:
    return bool(_cpu_flags() & set(BF16_CPU_FLAGS))


def cpu_supports_int8() -> bool:
    """int8 dot-product instructions; without them int8 still runs, but is no faster than float32."""
    from model.int8_runtime import INT8_CPU_FLAGS

    return bool(_cpu_flags() & set(INT8_CPU_FLAGS))


def resolve_precision(requested: str) -> str:
    """The precision to compute in.

    ``auto`` prefers int8 whenever TensorFlow has its TFLite interpreter (2.5-2.9x faster
    than float32 with VNNI, 1.3-1.6x without, same mAP), then bfloat16 (avx512_bf16/AMX),
    else float32 — and logs the fall back. An explicit ``bfloat16`` or ``int8`` that
    cannot run is an error, not a silent downgrade.
    """
    from model import int8_runtime

    if requested not in PRECISIONS:
        raise PrecisionUnavailableError(f"unknown precision {requested!r}; choose one of {', '.join(PRECISIONS)}")
    if requested == "float32":
        return "float32"
    if requested == "int8":
        if not int8_runtime.runtime_available():
            raise PrecisionUnavailableError("this TensorFlow build has no tf.lite interpreter for int8; use float32")
        if not cpu_supports_int8():
            log.warning(
                "precision int8: this CPU has no int8 dot-product instructions (VNNI); expect a smaller speed-up "
                "than with VNNI (measured 1.3-1.6x over float32 on AVX2-only CPUs, 2.5-2.9x with VNNI)"
            )
        return "int8"
    if requested == "bfloat16":
        if not cpu_supports_bfloat16():
            raise PrecisionUnavailableError("this CPU has no bfloat16 support (avx512_bf16/amx_bf16); use float32")
        return "bfloat16"
    if int8_runtime.runtime_available():
        if not cpu_supports_int8():
            log.info(
                "precision auto: int8 on a CPU without int8 dot-product instructions (VNNI): "
                "1.3-1.6x over float32 here (2.5-2.9x with VNNI)"
            )
        return "int8"
    if cpu_supports_bfloat16():
        log.info("precision auto: this TensorFlow build has no tf.lite interpreter for int8; using bfloat16")
        return "bfloat16"
    log.warning(
        "precision auto: no tf.lite interpreter for int8 in this TensorFlow build and no bfloat16 support "
        "(avx512_bf16/AMX) on this CPU; falling back to float32"
    )
    return "float32"


def _compute_in_bfloat16(config: dict[str, Any]) -> None:
    """Every layer of a functional model's config computes in bfloat16, inside nested models too (an ensemble's
    members are models of their own: setting the top level only once left them computing in float32)."""
    for layer in config.get("layers", []):
        inner = layer.get("config", {})
        if "layers" in inner:
            _compute_in_bfloat16(inner)
        elif layer.get("class_name") != "InputLayer" and "dtype" in inner:
            inner["dtype"] = "mixed_bfloat16"


def with_precision(keras_model: keras.Model, precision: str) -> keras.Model:
    """A copy of the model computing in bfloat16 (weights stay float32; outputs are cast back)."""
    if precision == "float32":
        return keras_model
    import_tensorflow()
    import keras

    config = keras_model.get_config()
    _compute_in_bfloat16(config)
    copy = keras.Model.from_config(config)
    copy.set_weights(keras_model.get_weights())
    return copy


def dequantize(x: np.ndarray) -> np.ndarray:
    """uint8 embeddings -> float32 in [-1, 1): ``(x - 128) / 128``. Float input passes through."""
    if x.dtype == np.uint8:
        out = x.astype(np.float32)
        out -= 128.0
        out *= 1.0 / 128.0
        return out
    return np.asarray(x, dtype=np.float32)


class _InferenceCall:
    """The model in inference mode, as its own callable per Predictor.

    ``tf.function`` keeps its retracing statistics per code object: a lambda here would make every Predictor in a
    process (tests, benchmarks, several models evaluated in turn) count as one function retracing, and TensorFlow
    would warn about expensive retracing that is not happening.
    """

    def __init__(self, keras_model: keras.Model) -> None:
        self.keras_model = keras_model

    def __call__(self, x: Any) -> Any:
        return self.keras_model(x, training=False)


class Predictor:
    """A loaded model wrapped in a traced inference function.

    Tracing once with a ``None`` batch dimension avoids Keras ``predict``'s
    per-call overhead and retracing on the last, shorter batch.
    """

    def __init__(
        self, keras_model: keras.Model, manifest: Manifest, batch_size: int = 1024, precision: str = "float32"
    ) -> None:
        import_tensorflow()
        import tensorflow as tf

        self.precision = resolve_precision(precision)
        self.manifest = manifest
        self.batch_size = batch_size
        self.frames = int(keras_model.input_shape[1])
        self._forward: Any
        if self.precision == "int8":
            from model.int8_runtime import Int8Forward

            threads = tf.config.threading.get_intra_op_parallelism_threads() or os.cpu_count() or 1
            self.model = keras_model
            self._forward = Int8Forward(keras_model, threads)
            return
        keras_model = with_precision(keras_model, self.precision)
        self.model = keras_model
        signature = [tf.TensorSpec(shape=(None, self.frames, 128), dtype=tf.float32)]
        self._forward = tf.function(_InferenceCall(keras_model), input_signature=signature)

    @classmethod
    def from_artifact(cls, artifact: str | Path, batch_size: int = 1024, precision: str = "float32") -> Predictor:
        """The artifact's model in its :func:`~model.serving_graph.serving_graph` (its weights are fixed, unlike a
        model in training, which is served as it is)."""
        from model.serving_graph import serving_graph

        keras_model, manifest = load(artifact)
        return cls(serving_graph(keras_model), manifest, batch_size=batch_size, precision=precision)

    @property
    def tag(self) -> str:
        """``name@version``, plus ``+bfloat16``/``+int8`` when not computing in float32: written into every result."""
        return self.manifest.tag if self.precision == "float32" else f"{self.manifest.tag}+{self.precision}"

    @property
    def classes(self) -> int:
        return len(self.manifest.classes)

    def predict(self, x: np.ndarray, progress: Callable[[int], None] | None = None) -> np.ndarray:
        """Probabilities ``(clips, classes)`` float32 for uint8 or float embeddings; ``progress(n)`` hears of each
        batch of ``n`` clips done (a long evaluation's progress bar)."""
        if x.shape[0] == 0:
            return np.zeros((0, self.classes), dtype=np.float32)
        outputs = []
        for start in range(0, x.shape[0], self.batch_size):
            batch = dequantize(x[start : start + self.batch_size])
            outputs.append(np.asarray(self._forward(batch), dtype=np.float32))
            if progress is not None:
                progress(len(batch))
        return np.concatenate(outputs, axis=0)
