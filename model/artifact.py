"""Model artifacts: a Keras file plus a JSON manifest that describes and pins it.

Layout of an artifact directory::

    <artifact>/model.keras     weights + architecture (Keras v3 format)
    <artifact>/manifest.json   name, version, architecture, classes, sha256, training, metrics

The sha256 in the manifest is checked before Keras touches the file, and the
file loads with ``safe_mode=True``: no Lambda layers, no pickled code.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from model.atomic_files import replacing, write_json
from model.labels import ClassLabel, labels_from_json, labels_to_json
from model.native_logs import import_tensorflow

if TYPE_CHECKING:
    import keras

MANIFEST_NAME = "manifest.json"
WEIGHTS_NAME = "model.keras"
FORMAT_VERSION = 1
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


class ArtifactError(Exception):
    """A model artifact is missing, malformed or does not match its manifest."""


class ArtifactIntegrityError(ArtifactError):
    """The weights file's sha256 differs from the manifest: refuse to load."""


class UnsafeArtifactError(ArtifactError):
    """The artifact reaches outside itself: a symlinked file, an archive member with a path, or
    weights stored in (or linked to) other files."""


# What Keras writes into a .keras archive; anything else (a path, an extra file) is refused.
ARCHIVE_MEMBERS = {"metadata.json", "config.json", "model.weights.h5"}


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
            "format_version": self.format_version,
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
    """Read and validate the manifest alone (cheap: no TensorFlow import)."""
    path = Path(artifact) / MANIFEST_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        inside = Path(artifact) / "model" / MANIFEST_NAME  # `audioset train --output RUN` writes RUN/model/
        hint = f"the artifact is {inside.parent}" if inside.is_file() else "is this a model artifact directory?"
        raise ArtifactError(f"{artifact}: no {MANIFEST_NAME}; {hint}") from exc
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{path}: not valid JSON ({exc})") from exc
    return Manifest.from_json(data, source=str(path))


#: The most each archive member may hold once extracted. The shipped weights are 29 MB; ten times the widest
#: network trained here still fits. A member declaring more is refused before a byte of it is read.
MEMBER_LIMITS = {"metadata.json": 1024**2, "config.json": 64 * 1024**2, "model.weights.h5": 4 * 1024**3}
#: Keras stores members uncompressed and weights barely compress; a member expanding more is a zip bomb.
MAX_COMPRESSION_RATIO = 50
#: Frames per clip a manifest may declare (AudioSet clips have 10).
MAX_FRAMES = 100_000


def _check_weights_h5(fileobj: IO[bytes], where: str) -> None:
    """Every dataset's bytes in the weights file itself: no external storage, virtual datasets or links.

    The visitors return a finding instead of raising: h5py turns an exception raised inside a visit
    into a SystemError.
    """
    import h5py

    def link_finding(name: str, link: object) -> str | None:
        if isinstance(link, h5py.ExternalLink | h5py.SoftLink):
            return f"'{name}' is a {type(link).__name__}"
        return None

    def data_finding(name: str, item: object) -> str | None:
        if isinstance(item, h5py.Dataset) and (item.is_virtual or item.external):
            return f"dataset '{name}' stores its data in other files"
        return None

    with h5py.File(fileobj, "r") as f:
        finding = f.visititems_links(link_finding) or f.visititems(data_finding)
    if finding:
        raise UnsafeArtifactError(f"{where}: {finding}; refusing to load")


def check_archive(path: Path, manifest: Manifest | None = None) -> None:
    """Refuse a ``.keras`` archive whose members are paths, unexpected files or larger than :data:`MEMBER_LIMITS`,
    whose weights reach other files, or whose input does not take the manifest's frames.

    Members are streamed (the weights through a temporary file), so memory stays flat whatever an archive
    declares; every failure is an :class:`ArtifactError`.
    """
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            names = [m.filename for m in members]
            unexpected = sorted(set(names) - ARCHIVE_MEMBERS)
            if unexpected or len(names) != len(set(names)):
                raise UnsafeArtifactError(
                    f"{path}: unexpected archive members {unexpected or names}; a .keras archive holds "
                    f"only {sorted(ARCHIVE_MEMBERS)}"
                )
            for member in members:
                if member.file_size > MEMBER_LIMITS[member.filename]:
                    raise UnsafeArtifactError(
                        f"{path}: member {member.filename} declares {member.file_size} bytes, over the "
                        f"{MEMBER_LIMITS[member.filename]}-byte limit for it"
                    )
                if member.file_size > MAX_COMPRESSION_RATIO * member.compress_size + 1024**2:
                    raise UnsafeArtifactError(
                        f"{path}: member {member.filename} expands {member.compress_size} bytes to "
                        f"{member.file_size} (over {MAX_COMPRESSION_RATIO}:1), which no saved model does; "
                        "refusing a possible zip bomb"
                    )
            if manifest is not None and "config.json" in names:
                with archive.open("config.json") as fh:
                    _check_input(json.loads(fh.read(MEMBER_LIMITS["config.json"] + 1)), manifest, path)
            if "model.weights.h5" in names:
                with archive.open("model.weights.h5") as member_fh, tempfile.TemporaryFile() as copy:
                    shutil.copyfileobj(member_fh, copy, 1 << 20)  # the archive's CRC and size checks still run
                    copy.seek(0)
                    _check_weights_h5(copy, f"{path}:model.weights.h5")
    except ArtifactError:
        raise
    except zipfile.BadZipFile as exc:
        raise ArtifactError(f"{path}: not a .keras archive ({exc})") from None
    except (OSError, ValueError, KeyError, TypeError, RuntimeError, zipfile.LargeZipFile) as exc:
        raise ArtifactError(f"{path}: cannot check the archive ({type(exc).__name__}: {exc})") from None


def _check_input(config: Any, manifest: Manifest, path: Path) -> None:
    """The model's input must take the manifest's frames x 128: a mismatch would fail every file it is given."""
    layers = config.get("config", {}).get("layers", []) if isinstance(config, dict) else []
    shapes = [
        layer["config"].get("batch_shape")
        for layer in layers
        if isinstance(layer, dict) and layer.get("class_name") == "InputLayer" and isinstance(layer.get("config"), dict)
    ]
    expected = [None, manifest.frames, 128]
    if shapes and any(list(shape or []) != expected for shape in shapes):
        raise ArtifactError(
            f"{path}: the model takes input {shapes[0]} but the manifest declares frames={manifest.frames} "
            f"(input {expected}); the manifest does not describe this model"
        )


def _regular_file(path: Path, artifact: str | Path) -> None:
    if path.is_symlink():
        raise UnsafeArtifactError(f"{path} is a symlink; an artifact's files must live in its folder ({artifact})")


def verify(artifact: str | Path) -> Manifest:
    """Check that the weights file matches the manifest's sha256 and keeps to its own folder."""
    _regular_file(Path(artifact) / MANIFEST_NAME, artifact)
    manifest = read_manifest(artifact)
    weights = Path(artifact) / WEIGHTS_NAME
    _regular_file(weights, artifact)
    if not weights.is_file():
        raise ArtifactError(f"{artifact}: missing {WEIGHTS_NAME}")
    actual = sha256_file(weights)
    if actual != manifest.sha256:
        raise ArtifactIntegrityError(
            f"{weights}: sha256 {actual[:16]}… does not match manifest {manifest.sha256[:16]}…; "
            "the file was modified or corrupted, refusing to load"
        )
    return manifest


def load(artifact: str | Path) -> tuple[keras.Model, Manifest]:
    """Verify, then load with Keras safe mode. Imports TensorFlow: call in worker children only."""
    manifest = verify(artifact)
    check_archive(Path(artifact) / WEIGHTS_NAME, manifest)
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
