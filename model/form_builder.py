"""Compiling an artifact's serving forms once: when ``train`` or ``ensemble`` writes it, or ``audioset compile``.

Each form is checked where it is made: its operators (:func:`~model.compiled_forms.check_flatbuffer`) and, given
labelled validation data, its accuracy gate — its mAP beside float32's on the same clips, recorded in the
manifest, so a form that loses accuracy is never served by ``auto`` (an int8 recipe once lost 0.10 mAP silently
elsewhere). Imports TensorFlow.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from model.artifact import MANIFEST_NAME, Manifest, load, save
from model.artifact_errors import ArtifactError
from model.atomic_files import replacing, write_json
from model.compiled_forms import FORM_FILES, FORM_RUNTIMES, FRAME_FORM_FILES, MAP_TOLERANCE, check_flatbuffer
from model.inference import Predictor
from model.litert_forward import LiteRTForward
from model.native_logs import import_tensorflow
from model.openvino_forward import OpenVINOForward, openvino_available
from model.tflite_convert import float16_weights, quantise

if TYPE_CHECKING:
    import keras

log = logging.getLogger("audioset.model")
#: How far the frames twin's clip output may stray from its form's: float rounding of a differently fused graph
#: (up to 2e-5 seen on the shipped twin), far below the 4 decimals records carry.
TWIN_TOLERANCE = 1e-4


@dataclass(frozen=True, slots=True)
class Validation:
    """Labelled held-out clips a form's accuracy gate is measured on (never the training data)."""

    x: np.ndarray
    y: np.ndarray
    description: str
    #: float32's mAP on these clips, when the caller has just measured it (train, ensemble): not measured again.
    float32_map: float | None = None


def compile_forms(
    keras_model: keras.Model, artifact: Path, manifest: Manifest, validation: Validation | None = None
) -> dict[str, dict[str, Any]]:
    """Write each form of ``keras_model``'s serving graph into ``artifact``; returns the manifest's ``compiled``."""
    tf = import_tensorflow()
    from model.serving_graph import serving_graph  # imports Keras

    served = serving_graph(keras_model)
    converter = f"TensorFlow {tf.__version__} TFLiteConverter"
    if validation is not None and validation.float32_map is None:
        validation = _with_float32_map(served, manifest, validation)
    int8_blob = quantise(served)
    forms = {"int8": _entry(int8_blob, artifact, "int8", f"{converter}, dynamic-range int8 weights")}
    bfloat16_blob = float16_weights(served)
    forms["bfloat16"] = _entry(bfloat16_blob, artifact, "bfloat16", f"{converter}, float16 weights")
    if validation is not None:
        forms["int8"]["gate"] = _gate(int8_blob, "int8", manifest, validation)
        if openvino_available():
            forms["bfloat16"]["gate"] = _gate(bfloat16_blob, "bfloat16", manifest, validation)
        else:
            log.info("the bfloat16 form's accuracy gate is not measured: OpenVINO is not installed")
    for precision, form in forms.items():
        if "gate" in form and not form["gate"]["passed"]:
            log.warning("the %s form of %s fails its accuracy gate: %s", precision, manifest.tag, form["gate"])
    twin = _frames_twin(served, int8_blob, artifact, manifest)
    if twin is not None:
        twin_blob, forms["int8"]["frames"] = twin
        with replacing(artifact / FRAME_FORM_FILES["int8"]) as tmp:
            tmp.write_bytes(twin_blob)
    for precision, blob in (("int8", int8_blob), ("bfloat16", bfloat16_blob)):
        with replacing(artifact / FORM_FILES[precision]) as tmp:
            tmp.write_bytes(blob)
    return forms


def _entry(blob: bytes, artifact: Path, precision: str, made_by: str) -> dict[str, Any]:
    check_flatbuffer(blob, str(artifact / FORM_FILES[precision]))
    return {
        "file": FORM_FILES[precision],
        "sha256": hashlib.sha256(blob).hexdigest(),
        "bytes": len(blob),
        "made_by": made_by,
        "runtime": FORM_RUNTIMES[precision],
    }


def _frames_twin(
    served: keras.Model, blob: bytes, artifact: Path, manifest: Manifest
) -> tuple[bytes, dict[str, Any]] | None:
    """The int8 form with per-frame evidence as a second output, for recordings' event edges; None for a model
    without evidence. Its clip output must be the form's own (the same layers and weights), or nothing ships."""
    from model.frame_evidence import with_frame_evidence

    with_frames = with_frame_evidence(served)
    if with_frames is None:
        return None
    twin = quantise(with_frames)
    where = str(artifact / FRAME_FORM_FILES["int8"])
    check_flatbuffer(twin, where)
    frames, classes = manifest.frames, len(manifest.classes)
    probe = np.random.default_rng(0).uniform(-1, 1, size=(64, frames, 128)).astype(np.float32)
    clip = LiteRTForward(blob, frames, classes, where=where)(probe)
    twin_clip, _ = LiteRTForward(twin, frames, classes, where=where, evidence=True).with_frames(probe)
    difference = float(np.abs(clip - twin_clip).max())
    if difference > TWIN_TOLERANCE:
        raise ArtifactError(f"{where}: its clip output differs from the int8 form's by {difference:.2g}")
    return twin, {
        "file": FRAME_FORM_FILES["int8"],
        "sha256": hashlib.sha256(twin).hexdigest(),
        "bytes": len(twin),
        "clip_output_difference": float(f"{difference:.3g}"),
    }


def _with_float32_map(served: keras.Model, manifest: Manifest, validation: Validation) -> Validation:
    from model.metrics import evaluate

    float32 = Predictor.from_keras(served, manifest, batch_size=512)
    measured = evaluate(np.asarray(validation.y, dtype=bool), float32.predict(validation.x)).mean_average_precision
    return Validation(validation.x, validation.y, validation.description, float(measured))


def _gate(blob: bytes, precision: str, manifest: Manifest, validation: Validation) -> dict[str, Any]:
    """The form's mAP on the validation clips beside float32's, run by the runtime that serves it."""
    from model.metrics import evaluate

    frames, classes, where = manifest.frames, len(manifest.classes), f"{manifest.tag} {precision} form"
    runtime = FORM_RUNTIMES[precision]
    forward = (OpenVINOForward if runtime == "OpenVINO" else LiteRTForward)(blob, frames, classes, where=where)
    served = Predictor(forward, manifest, frames=frames, batch_size=512, precision=precision, runtime=runtime)
    measured = evaluate(np.asarray(validation.y, dtype=bool), served.predict(validation.x)).mean_average_precision
    reference = float(validation.float32_map or 0.0)
    # OpenVINO computes in float32 on a CPU without bfloat16: the gate then checks the float16 weights only.
    computed_in = getattr(forward, "computes_in", precision)
    return {
        "data": validation.description,
        "clips": len(validation.x),
        **({} if computed_in == precision else {"computed_in": computed_in}),
        "float32_map": round(reference, 5),
        "map": round(float(measured), 5),
        "tolerance": MAP_TOLERANCE,
        "passed": bool(measured >= reference - MAP_TOLERANCE),
    }


def publish(
    keras_model: keras.Model,
    manifest: Manifest,
    artifact: str | Path,
    validation: Validation | None = None,
    *,
    with_forms: bool = True,
) -> Manifest:
    """What ``train`` and ``ensemble`` write: :func:`~model.artifact.save` with the compiled forms, or without
    them (``with_forms=False``: Keras serves it until ``audioset compile`` adds them)."""
    directory = Path(artifact)
    directory.mkdir(parents=True, exist_ok=True)
    if with_forms:
        manifest.compiled = compile_forms(keras_model, directory, manifest, validation)
    return save(keras_model, manifest, directory)


def add_forms(artifact: str | Path, validation: Validation | None = None) -> Manifest:
    """Compile the forms of an existing artifact (written before they existed) and list them in its manifest;
    its weights are untouched."""
    keras_model, manifest = load(artifact)
    manifest.compiled = compile_forms(keras_model, Path(artifact), manifest, validation)
    write_json(Path(artifact) / MANIFEST_NAME, manifest.to_json())
    return manifest
