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
from model.compiled_forms import FORM_FILES, FRAME_FORM_FILES, MAP_TOLERANCE, check_flatbuffer
from model.inference import Predictor
from model.litert_forward import LiteRTForward
from model.native_logs import import_tensorflow
from model.tflite_convert import quantise

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
    blob = quantise(served)
    path = artifact / FORM_FILES["int8"]
    check_flatbuffer(blob, str(path))
    entry: dict[str, Any] = {
        "file": path.name,
        "sha256": hashlib.sha256(blob).hexdigest(),
        "bytes": len(blob),
        "made_by": f"TensorFlow {tf.__version__} TFLiteConverter, dynamic-range int8 weights",
        "runtime": "LiteRT",
    }
    if validation is not None:
        entry["gate"] = _gate(served, blob, manifest, validation)
        if not entry["gate"]["passed"]:
            log.warning("the int8 form of %s fails its accuracy gate: %s", manifest.tag, entry["gate"])
    twin = _frames_twin(served, blob, artifact, manifest)
    if twin is not None:
        twin_blob, entry["frames"] = twin
        with replacing(artifact / FRAME_FORM_FILES["int8"]) as tmp:
            tmp.write_bytes(twin_blob)
    with replacing(path) as tmp:
        tmp.write_bytes(blob)
    return {"int8": entry}


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


def _gate(served: keras.Model, blob: bytes, manifest: Manifest, validation: Validation) -> dict[str, Any]:
    from model.metrics import evaluate

    frames, classes = manifest.frames, len(manifest.classes)
    compiled = LiteRTForward(blob, frames, classes, where=f"{manifest.tag} int8 form")
    y = np.asarray(validation.y, dtype=bool)
    reference = validation.float32_map
    if reference is None:
        float32 = Predictor.from_keras(served, manifest, batch_size=512)
        reference = evaluate(y, float32.predict(validation.x)).mean_average_precision
    int8 = Predictor(compiled, manifest, frames=frames, batch_size=512, precision="int8", runtime="LiteRT")
    measured = evaluate(y, int8.predict(validation.x)).mean_average_precision
    return {
        "data": validation.description,
        "clips": len(validation.x),
        "float32_map": round(float(reference), 5),
        "map": round(float(measured), 5),
        "tolerance": MAP_TOLERANCE,
        "passed": bool(measured >= reference - MAP_TOLERANCE),
    }


def save_with_forms(
    keras_model: keras.Model, manifest: Manifest, artifact: str | Path, validation: Validation | None = None
) -> Manifest:
    """:func:`~model.artifact.save` with the compiled forms: what ``train`` and ``ensemble`` write."""
    directory = Path(artifact)
    directory.mkdir(parents=True, exist_ok=True)
    manifest.compiled = compile_forms(keras_model, directory, manifest, validation)
    return save(keras_model, manifest, directory)


def add_forms(artifact: str | Path, validation: Validation | None = None) -> Manifest:
    """Compile the forms of an existing artifact (written before they existed) and list them in its manifest;
    its weights are untouched."""
    keras_model, manifest = load(artifact)
    manifest.compiled = compile_forms(keras_model, Path(artifact), manifest, validation)
    write_json(Path(artifact) / MANIFEST_NAME, manifest.to_json())
    return manifest
