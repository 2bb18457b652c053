"""Load labelled embedding files (local paths or bucket URLs) into memory for training and evaluation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from audioset_batch.errors import FrameCountError, InputFileError, LocationError
from audioset_batch.scoring.hdf5_reader import EmbeddingFile, LayoutError, Limits
from audioset_batch.scoring.limits import reader_limits
from audioset_batch.settings import Settings
from audioset_batch.storage.locations import Location, distinct_inputs, local_file, parse
from model.artifact import read_manifest
from model.labels import ClassLabel, load_labels
from model.train_config import TrainingDataError


@dataclass(frozen=True, slots=True)
class Dataset:
    x: np.ndarray  # (clips, frames, 128) as stored (uint8 or float)
    y: np.ndarray  # (clips, classes) bool
    sources: list[str]  # what a manifest records: see :func:`provenance`
    files: dict[str, str]  # each file's identity (absolute path, URL) -> the name it was given by


@dataclass(frozen=True)
class TrainingData:
    """What ``audioset train`` and a queued run train on: one loader, so the two cannot check differently."""

    train: Dataset
    labels: list[ClassLabel]
    held_out: Dataset | None


def provenance(location: Location) -> str:
    """A local file by its name (this host's folders are not where the data came from), a bucket URL whole."""
    return location.name if isinstance(location, Path) else str(location)


def _read(path: Path, name: str, limits: Limits, frames: int | None, windows: bool) -> tuple[np.ndarray, np.ndarray]:
    """The whole file; an unreadable one raises its own error class with the file's name in front."""
    try:
        return _read_all(path, limits, frames, windows)
    except InputFileError as exc:
        raise type(exc)(f"{name}: {exc}") from exc


def _read_all(path: Path, limits: Limits, frames: int | None, windows: bool) -> tuple[np.ndarray, np.ndarray]:
    with EmbeddingFile(path, limits, frames=frames, windows=windows) as data:
        if data.recording:
            raise LayoutError("x is one recording (frames x 128) with no labels per clip; evaluation takes clips")
        if data.y is None:
            raise LayoutError("dataset 'y' (labels) is required for training and evaluation")
        xs, ys = [], []
        for chunk in data.chunks(65536):
            xs.append(chunk.x)
            assert chunk.y is not None
            ys.append(chunk.y.astype(bool))
    return np.concatenate(xs), np.concatenate(ys)


def load_dataset(
    locations: Sequence[str],
    settings: Settings,
    frames: int | None = None,
    classes: int | None = None,
    windows: bool = False,
) -> Dataset:
    """Concatenate files in order (a folder or prefix: its HDF5 files); all must agree on frames and classes.

    ``frames`` and ``classes`` are what a model takes and predicts: a file with other counts is refused by name
    before the model sees it, unless ``windows`` (evaluation) accepts clips of any frame count.
    """
    limits = reader_limits(settings)
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    sources: list[str] = []
    found, repeated = distinct_inputs(locations, settings)
    if repeated:
        raise LocationError(
            f"{repeated[0]}: given more than once (by name, or inside a folder also given); its clips would count twice"
        )
    files = {key: str(location) for key, location in found.items()}
    for location in found.values():
        name = str(location)
        with local_file(location, settings, suffix=".h5") as path:
            x, y = _read(path, name, limits, frames, windows)
        if classes is not None and y.shape[1] != classes:
            raise LayoutError(f"{name}: labels for {y.shape[1]} classes per clip; the model predicts {classes}")
        if xs and x.shape[1] != xs[0].shape[1]:
            raise FrameCountError(
                f"{name}: clips of {x.shape[1]} frames, the first file's have {xs[0].shape[1]}; give files of one "
                "clip length together"
            )
        if xs and (x.shape[1:] != xs[0].shape[1:] or y.shape[1] != ys[0].shape[1]):
            raise LayoutError(
                f"{name}: shapes x{x.shape[1:]} y{y.shape[1:]} differ from the first file's "
                f"x{xs[0].shape[1:]} y{ys[0].shape[1:]}"
            )
        xs.append(x)
        ys.append(y)
        sources.append(provenance(location))
    if not xs:
        raise LocationError("no data files given")
    return Dataset(x=np.concatenate(xs), y=np.concatenate(ys), sources=sources, files=files)


def load_training_data(
    data: Sequence[str], validation: Sequence[str], labels_file: str | Path | None, settings: Settings
) -> TrainingData:
    """The training files, their class list and the validation files, which must not be training files too:
    a checkpoint chosen on clips the model trained on is chosen on memory."""
    train = load_dataset(data, settings)
    labels = class_list(labels_file, train.y.shape[1], settings)
    held_out = load_dataset(validation, settings) if validation else None
    if held_out is not None and (both := sorted(train.files.keys() & held_out.files.keys())):
        raise TrainingDataError(
            f"{held_out.files[both[0]]} is both training and validation data; validate on files the model does "
            "not train on (or give no validation files: a stratified split of the training data is held out)"
        )
    return TrainingData(train, labels, held_out)


def class_list(labels_file: str | Path | None, classes: int, settings: Settings) -> list[ClassLabel]:
    """The names of the data's classes: the CSV given, else the served model's when the data has as many."""
    if labels_file:  # by the one location rule: a path, file://bucket/key, cos://… or s3://…
        location = labels_file if isinstance(labels_file, Path) else parse(labels_file, settings)
        with local_file(location, settings, suffix=".csv") as path:
            return load_labels(path)
    default = read_manifest(settings.model_path).classes
    if classes != len(default):
        raise TrainingDataError(
            f"the data is labelled with {classes} classes; name them in a class list CSV (index,mid,display_name) "
            f"with --labels FILE (or labels: in a run spec). Without one, training uses the model's "
            f"{len(default)} classes"
        )
    return default
