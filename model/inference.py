"""The one inference path shared by the worker, ``audioset score`` and ``audioset evaluate``."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from model.artifact import Manifest, load, read_manifest
from model.choices import PRECISIONS
from model.compiled_forms import FORM_RUNTIMES, gate_failed
from model.native_logs import import_tensorflow
from model.served_forms import FramesForward, compiled_forward, form_runs_here
from model.tf_setup import configure_tensorflow

if TYPE_CHECKING:
    import keras

log = logging.getLogger("audioset.model")
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
INT8_CPU_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


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


def cpu_has_amx() -> bool:
    """AMX tiles with bfloat16: where OpenVINO's bfloat16 outruns LiteRT's int8 (1.3-1.4x end to end, measured)."""
    return "amx_bf16" in _cpu_flags()


def cpu_supports_int8() -> bool:
    """int8 dot-product instructions; without them int8 still runs, but is no faster than float32."""
    return bool(_cpu_flags() & set(INT8_CPU_FLAGS))


def resolve_precision(requested: str, forms: dict[str, dict[str, Any]] | None = None) -> str:
    """The precision to compute in, given the artifact's compiled ``forms`` (its manifest's ``compiled``).

    ``auto`` prefers, on a CPU with AMX, the bfloat16 form in OpenVINO (1.3-1.4x int8 end to end there, same mAP); else
    int8 (LiteRT; 2.5-2.9x faster than float32 with VNNI, 1.2-1.6x without, same mAP); a form that failed its
    accuracy gate is passed over; then bfloat16 (avx512_bf16/AMX), else float32, and logs the fall back. An
    explicit ``bfloat16`` or ``int8`` that cannot run is an error, not a silent downgrade.
    """
    forms = forms or {}
    if requested not in PRECISIONS:
        raise PrecisionUnavailableError(f"unknown precision {requested!r}; choose one of {', '.join(PRECISIONS)}")
    if requested == "float32":
        return "float32"
    int8_form = forms.get("int8") or {}
    if requested == "int8":
        if not _int8_runs(forms):
            raise PrecisionUnavailableError("int8 needs LiteRT (pip install ai-edge-litert); use float32")
        if gate_failed(int8_form):
            log.warning(
                "precision int8: this model's int8 form failed its accuracy gate (%s); served as asked",
                _gate_text(int8_form),
            )
        if not cpu_supports_int8():
            log.warning(
                "precision int8: this CPU has no int8 dot-product instructions (VNNI); expect a smaller speed-up "
                "than with VNNI (measured 1.2-1.6x over float32 on AVX2-only CPUs, 2.5-2.9x with VNNI)"
            )
        return "int8"
    if requested == "bfloat16":
        if not cpu_supports_bfloat16():
            raise PrecisionUnavailableError("this CPU has no bfloat16 support (avx512_bf16/amx_bf16); use float32")
        return "bfloat16"
    bfloat16_form = forms.get("bfloat16") or {}
    if cpu_has_amx() and form_runs_here("bfloat16", forms) and not gate_failed(bfloat16_form):
        log.info("precision auto: bfloat16, the compiled form in OpenVINO on AMX (faster than int8 there)")
        return "bfloat16"
    if gate_failed(int8_form):
        log.info("precision auto: not int8, whose form failed its accuracy gate (%s)", _gate_text(int8_form))
    elif _int8_runs(forms):
        if not cpu_supports_int8():
            log.info(
                "precision auto: int8 on a CPU without int8 dot-product instructions (VNNI): "
                "1.2-1.6x over float32 here (2.5-2.9x with VNNI)"
            )
        return "int8"
    if cpu_supports_bfloat16():
        log.info("precision auto: bfloat16 (int8 cannot be served here)")
        return "bfloat16"
    log.warning(
        "precision auto: int8 cannot be served here and this CPU has no bfloat16 (avx512_bf16/AMX); "
        "falling back to float32"
    )
    return "float32"


def _int8_runs(forms: dict[str, dict[str, Any]]) -> bool:
    """LiteRT is installed, and the artifact carries its int8 form or TensorFlow can convert it at load."""
    from model.litert_forward import litert_available

    if not litert_available():
        return False
    if "int8" in forms:
        return True
    from model.tflite_convert import converter_available

    return converter_available()


def _gate_text(form: dict[str, Any]) -> str:
    gate = form.get("gate") or {}
    return f"mAP {gate.get('map')} against float32's {gate.get('float32_map')} on {gate.get('data')}"


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
    """A loaded model behind one ``forward`` callable, fed in batches of uint8 or float embeddings.

    Build it with :meth:`from_artifact` (serving: the compiled form where the artifact has one, with no
    TensorFlow import) or :meth:`from_keras` (a model in memory: training, ensembles, tests).
    """

    def __init__(
        self,
        forward: Callable[[np.ndarray], Any],
        manifest: Manifest,
        *,
        frames: int,
        batch_size: int = 1024,
        precision: str = "float32",
        runtime: str = "TensorFlow",
        model: keras.Model | None = None,
        evidence: Callable[[], FramesForward] | None = None,
    ) -> None:
        self._forward = forward
        self._evidence_factory = evidence
        self._evidence: FramesForward | None = None
        #: The model scores each frame (:meth:`predict_frames` gives them): recordings' event edges use it.
        self.frame_evidence = evidence is not None
        self.manifest = manifest
        self.frames = frames
        self.batch_size = batch_size
        self.precision = precision
        #: What computes the forward pass, for the load log line: ``LiteRT`` or ``TensorFlow``.
        self.runtime = runtime
        #: The Keras model, when one was loaded (None when a compiled form serves).
        self.model = model

    @classmethod
    def from_keras(
        cls,
        keras_model: keras.Model,
        manifest: Manifest,
        batch_size: int = 1024,
        precision: str = "float32",
        threads: int | None = None,
    ) -> Predictor:
        """A Keras model in memory, in ``precision`` (int8 converts it here, which takes seconds).

        Tracing once with a ``None`` batch dimension avoids Keras ``predict``'s per-call overhead and retracing
        on the last, shorter batch.
        """
        return cls._from_keras(keras_model, manifest, batch_size, resolve_precision(precision), threads)

    @classmethod
    def _from_keras(
        cls, keras_model: keras.Model, manifest: Manifest, batch_size: int, precision: str, threads: int | None
    ) -> Predictor:
        frames = int(keras_model.input_shape[1])
        if precision == "int8":
            from model.litert_forward import LiteRTForward
            from model.tflite_convert import quantise

            forward = LiteRTForward(quantise(keras_model), frames, len(manifest.classes), threads, where=manifest.tag)

            def converted_evidence(with_frames: keras.Model) -> FramesForward:
                blob = quantise(with_frames)
                twin = LiteRTForward(blob, frames, len(manifest.classes), threads, manifest.tag, evidence=True)
                return twin.with_frames

            return cls(
                forward,
                manifest,
                frames=frames,
                batch_size=batch_size,
                precision=precision,
                runtime="LiteRT (converted at load)",
                model=keras_model,
                evidence=_deferred(keras_model, converted_evidence),
            )
        import_tensorflow()
        import tensorflow as tf

        if threads:
            configure_tensorflow(threads)
        keras_model = with_precision(keras_model, precision)
        signature = [tf.TensorSpec(shape=(None, frames, 128), dtype=tf.float32)]
        traced = tf.function(_InferenceCall(keras_model), input_signature=signature)

        def traced_evidence(with_frames: keras.Model) -> FramesForward:
            return tf.function(_InferenceCall(with_frames), input_signature=signature)  # type: ignore[no-any-return]

        return cls(
            traced,
            manifest,
            frames=frames,
            batch_size=batch_size,
            precision=precision,
            model=keras_model,
            evidence=_deferred(keras_model, traced_evidence),
        )

    @classmethod
    def from_artifact(
        cls, artifact: str | Path, batch_size: int = 1024, precision: str = "float32", threads: int | None = None
    ) -> Predictor:
        """The artifact's model as served: its compiled form for the precision where it has one (LiteRT, no
        TensorFlow import), else its Keras model in its :func:`~model.serving_graph.serving_graph`.

        ``threads`` bounds the forward pass's threads (None: every core).
        """
        manifest = read_manifest(artifact)
        resolved = resolve_precision(precision, manifest.compiled)
        if form_runs_here(resolved, manifest.compiled):
            forward, evidence = compiled_forward(artifact, manifest, resolved, threads)
            return cls(
                forward,
                manifest,
                frames=manifest.frames,
                batch_size=batch_size,
                precision=resolved,
                runtime=FORM_RUNTIMES[resolved],
                evidence=evidence,
            )
        if resolved == "int8":
            _say_once(
                f"{artifact} has no compiled int8 form: converting it at each load (seconds, with TensorFlow); "
                f"`audioset compile {artifact}` adds it once"
            )
        from model.serving_graph import serving_graph

        keras_model, manifest = load(artifact)
        return cls._from_keras(serving_graph(keras_model), manifest, batch_size, resolved, threads)

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
        # A forward that cuts its own parts takes bigger calls; one that dequantises in its graph takes uint8 as is
        step = max(self.batch_size, getattr(self._forward, "call_clips", 0))
        raw = getattr(self._forward, "takes_uint8", False) and x.dtype == np.uint8
        outputs = []
        for start in range(0, x.shape[0], step):
            batch = x[start : start + step] if raw else dequantize(x[start : start + step])
            outputs.append(np.asarray(self._forward(batch), dtype=np.float32))
            if progress is not None:
                progress(len(batch))
        return outputs[0] if len(outputs) == 1 else np.concatenate(outputs, axis=0)

    def predict_frames(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Clip probabilities and, where the model has per-frame evidence (:mod:`model.frame_evidence`), each
        frame's probabilities ``(clips, frames, classes)``; else ``None`` beside the clip probabilities.

        The evidence is built on first use (a second interpreter, or a second traced function), from the thread
        that calls it, so scoring clips never pays for it.
        """
        if self._evidence is None and self._evidence_factory is not None:
            self._evidence = self._evidence_factory()
        if self._evidence is None:
            return self.predict(x), None
        if x.shape[0] == 0:
            return np.zeros((0, self.classes), np.float32), np.zeros((0, self.frames, self.classes), np.float32)
        clips, frames = [], []
        for start in range(0, x.shape[0], self.batch_size):
            clip, per_frame = self._evidence(dequantize(x[start : start + self.batch_size]))
            clips.append(np.asarray(clip, dtype=np.float32))
            frames.append(np.asarray(per_frame, dtype=np.float32))
        return np.concatenate(clips, axis=0), np.concatenate(frames, axis=0)


def _deferred(
    keras_model: keras.Model, build: Callable[[keras.Model], FramesForward]
) -> Callable[[], FramesForward] | None:
    """``build`` over the model with per-frame evidence, called on first use; None when it has none (known at once:
    finding it only builds a graph, while tracing or converting it takes seconds)."""
    from model.frame_evidence import with_frame_evidence

    with_frames = with_frame_evidence(keras_model)
    return None if with_frames is None else lambda: build(with_frames)


_said: set[str] = set()


def _say_once(message: str) -> None:
    if message not in _said:
        _said.add(message)
        log.warning(message)
