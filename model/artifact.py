"""Model artifacts: a Keras file plus a JSON manifest that describes and pins it.

Layout of an artifact directory::

    <artifact>/model.keras        weights + architecture (Keras v3 format)
    <artifact>/model.int8.tflite  the serving graph compiled for LiteRT (optional; :mod:`model.compiled_forms`)
    <artifact>/model.int8.frames.tflite  the same with per-frame evidence, for recordings' event edges (optional)
    <artifact>/manifest.json      name, version, architecture, classes, sha256s, training, metrics, thresholds

The sha256 in the manifest is checked before Keras touches the file, and the
file loads with ``safe_mode=True``: no Lambda layers, no pickled code.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from model.artifact_errors import ArtifactError, ArtifactIntegrityError, refuse_symlink
from model.atomic_files import replacing, write_json
from model.compiled_forms import read_form, validated
from model.keras_archive import check_archive
from model.labels import ClassLabel, labels_from_json, labels_to_json
from model.native_logs import import_tensorflow

if TYPE_CHECKING:
    import keras

MANIFEST_NAME = "manifest.json"
WEIGHTS_NAME = "model.keras"
#: 2 added per-class ``thresholds`` and ``compiled`` serving forms; this release reads 1 and 2, and writes 2.
FORMAT_VERSION = 2
#: The pretrained model shipped in the repository (and in the wheel); the default AUDIOSET_MODEL_PATH.
DEFAULT_ARTIFACT = Path(__file__).resolve().parent / "pretrained" / "audioset-default"


#: What a model name or version may be: it is written into every result line, log line and folder name.
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def name_problem(value: str, what: str = "name") -> str | None:
    """Why ``value`` cannot be a model name (or version), or None if it can."""
    if MODEL_NAME.match(value) and ".." not in value:
        return None
    return (
        f"{what} {value!r} must be 1-100 letters, digits, '.', '_' or '-', starting with a letter or digit "
        "(it is written into every result and names folders)"
    )


def label_problem(name: str, version: str) -> str | None:
    """Why ``name@version`` cannot label a model, or None: the one check for manifests, train and ensemble."""
    return name_problem(name, "name") or name_problem(version, "version")


@dataclass(slots=True)
class Manifest:
    name: str
    version: str
    architecture: str
    classes: list[ClassLabel]
    frames: int
    sha256: str = ""
    hidden_units: int = 1024
    branches: int = 1
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    format_version: int = FORMAT_VERSION
    #: Per-class decision thresholds (:mod:`model.thresholds`): values, rule, data and cross-fitted figures.
    thresholds: dict[str, Any] = field(default_factory=dict)
    #: Compiled serving forms by precision (:mod:`model.compiled_forms`): file, sha256, size, maker, accuracy gate.
    compiled: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def threshold_values(self) -> list[float] | None:
        values = self.thresholds.get("values")
        return [float(v) for v in values] if values else None

    @property
    def tag(self) -> str:
        """The ``name@version`` string written into every result line."""
        return f"{self.name}@{self.version}"

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "version": self.version,
            "architecture": self.architecture,
            "frames": self.frames,
            "hidden_units": self.hidden_units,
            "branches": self.branches,
            "sha256": self.sha256,
            "created": self.created,
            "training": self.training,
            "metrics": self.metrics,
            "classes": labels_to_json(self.classes),
            **({"thresholds": self.thresholds} if self.thresholds else {}),
            **({"compiled": self.compiled} if self.compiled else {}),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], source: str = "<manifest>") -> Manifest:
        try:
            if int(data["format_version"]) > FORMAT_VERSION:
                raise ArtifactError(f"{source}: format_version {data['format_version']} is newer than this release")
            if problem := label_problem(str(data["name"]), str(data["version"])):
                raise ArtifactError(f"{source}: {problem}")
            return cls(
                name=str(data["name"]),
                version=str(data["version"]),
                architecture=str(data["architecture"]),
                classes=labels_from_json(data["classes"]),
                frames=_frames(data["frames"], source),
                sha256=str(data["sha256"]),
                hidden_units=int(data.get("hidden_units", 1024)),
                branches=int(data.get("branches", 1)),
                training=dict(data.get("training", {})),
                metrics=dict(data.get("metrics", {})),
                created=str(data.get("created", "")),
                format_version=int(data["format_version"]),
                thresholds=_thresholds(data.get("thresholds"), len(data["classes"]), source),
                compiled=validated(data.get("compiled"), source),
            )
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, ArtifactError):
                raise
            raise ArtifactError(f"{source}: malformed manifest ({type(exc).__name__}: {exc})") from exc


def _thresholds(value: Any, classes: int, source: str) -> dict[str, Any]:
    if value is None:
        return {}
    values = value.get("values") if isinstance(value, dict) else None
    if not isinstance(values, list) or len(values) != classes or not all(0 < float(v) <= 1 for v in values):
        raise ArtifactError(f"{source}: thresholds must hold one value in (0, 1] per class ({classes})")
    return dict(value)


def write_thresholds(artifact: str | Path, thresholds: dict[str, Any]) -> Manifest:
    """Keep per-class thresholds in an artifact's manifest (atomically; the weights are untouched)."""
    manifest = read_manifest(artifact)
    manifest.thresholds = _thresholds(thresholds, len(manifest.classes), str(artifact))
    write_json(Path(artifact) / MANIFEST_NAME, manifest.to_json())
    return manifest


def _frames(value: Any, source: str) -> int:
    frames = int(value)
    if not 1 <= frames <= MAX_FRAMES:
        raise ArtifactError(f"{source}: frames={frames} is not a frame count (1..{MAX_FRAMES}; AudioSet clips have 10)")
    return frames


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_manifest(artifact: str | Path) -> Manifest:
    """Read and validate the manifest alone (cheap: no TensorFlow import); a symlinked manifest is refused here, so
    every path that serves a model (the compiled form's too) refuses it."""
    path = Path(artifact) / MANIFEST_NAME
    refuse_symlink(path, artifact)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        inside = Path(artifact) / "model" / MANIFEST_NAME  # `audioset train --output RUN` writes RUN/model/
        hint = f"the artifact is {inside.parent}" if inside.is_file() else "is this a model artifact directory?"
        raise ArtifactError(f"{artifact}: no {MANIFEST_NAME}; {hint}") from exc
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{path}: not valid JSON ({exc})") from exc
    return Manifest.from_json(data, source=str(path))


#: Frames per clip a manifest may declare (AudioSet clips have 10).
MAX_FRAMES = 100_000


def verify(artifact: str | Path) -> Manifest:
    """Check that the weights file matches the manifest's sha256 and keeps to its own folder."""
    manifest = read_manifest(artifact)
    weights = Path(artifact) / WEIGHTS_NAME
    refuse_symlink(weights, artifact)
    if not weights.is_file():
        raise ArtifactError(f"{artifact}: missing {WEIGHTS_NAME}")
    actual = sha256_file(weights)
    if actual != manifest.sha256:
        raise ArtifactIntegrityError(
            f"{weights}: sha256 {actual[:16]}… does not match manifest {manifest.sha256[:16]}…; "
            "the file was modified or corrupted, refusing to load"
        )
    return manifest


def check_artifact(artifact: str | Path) -> Manifest:
    """Every file of the artifact checked without loading it: the manifest, ``model.keras`` (sha256 and archive)
    and each compiled form (sha256, size, operators). What a worker's parent runs before forking, and ``doctor``."""
    manifest = verify(artifact)
    check_archive(Path(artifact) / WEIGHTS_NAME, manifest.frames)
    for form in manifest.compiled.values():
        read_form(artifact, form)
        if "frames" in form:
            read_form(artifact, form["frames"])
    return manifest


def load(artifact: str | Path) -> tuple[keras.Model, Manifest]:
    """Verify, then load with Keras safe mode. Imports TensorFlow: call in worker children only."""
    manifest = verify(artifact)
    check_archive(Path(artifact) / WEIGHTS_NAME, manifest.frames)
    import_tensorflow()
    import keras

    # Registers the custom layers: the networks' pooling and the ensembles' combining rules.
    import model.attention_pooling
    import model.ensemble_layers  # noqa: F401

    try:
        loaded = keras.models.load_model(Path(artifact) / WEIGHTS_NAME, compile=False, safe_mode=True)
    except Exception as exc:  # Keras raises ValueError, TypeError, OSError…: one class for the caller
        raise ArtifactError(f"{artifact}: Keras could not load {WEIGHTS_NAME} ({type(exc).__name__}: {exc})") from exc
    expected = (None, len(manifest.classes))
    if tuple(loaded.output_shape) != expected:
        raise ArtifactError(
            f"{artifact}: model outputs {loaded.output_shape} but the manifest declares {len(manifest.classes)} classes"
        )
    if tuple(loaded.input_shape) != (None, manifest.frames, 128):
        raise ArtifactError(
            f"{artifact}: model takes {loaded.input_shape} but the manifest declares frames={manifest.frames}"
        )
    return loaded, manifest


def save(keras_model: keras.Model, manifest: Manifest, artifact: str | Path) -> Manifest:
    """Write ``model.keras`` and a manifest carrying its sha256, atomically per file."""
    if problem := label_problem(manifest.name, manifest.version):
        raise ArtifactError(problem)
    directory = Path(artifact)
    directory.mkdir(parents=True, exist_ok=True)
    import_tensorflow()
    import keras

    # Serving needs no optimizer state: a model rebuilt from its config is uncompiled, so it
    # saves weights and graph only (a third of the size). clone_model would copy the optimizer.
    clean = keras.Model.from_config(keras_model.get_config())
    clean.set_weights(keras_model.get_weights())
    with replacing(directory / WEIGHTS_NAME) as tmp:
        clean.save(tmp)
        manifest.sha256 = sha256_file(tmp)
    write_json(directory / MANIFEST_NAME, manifest.to_json())
    return manifest


def save_untrained(
    artifact: str | Path,
    architecture: str,
    classes: list[ClassLabel],
    hidden_units: int,
    *,
    name: str,
    version: str,
    why: str,
    dropout: float = 0.5,
    seed: int | None = None,
) -> Path:
    """A freshly initialised artifact: what speed measurements and tests need, where nothing learnt matters."""
    import_tensorflow()
    import keras

    from model.architectures import build_model

    if seed is not None:
        keras.utils.set_random_seed(seed)
    net = build_model(architecture, classes=len(classes), hidden_units=hidden_units, dropout=dropout)
    manifest = Manifest(
        name=name,
        version=version,
        architecture=architecture,
        classes=classes,
        frames=10,
        hidden_units=hidden_units,
        training={"data": f"random initialisation ({why})"},
    )
    save(net, manifest, artifact)
    return Path(artifact)
