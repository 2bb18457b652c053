"""Ensembles served as one model: the members' predictions averaged inside one Keras graph.

Members of different architectures make different mistakes, so their mean scores better
than any one of them; the mean is of probabilities (``mean``) or of log-odds (``logit-mean``).
Building the mean into a single artifact keeps one way to serve: the worker,
``audioset score``, ``audioset evaluate`` and the int8 path load it like any model.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from model.artifact import MANIFEST_NAME, WEIGHTS_NAME, Manifest, label_problem, load, read_manifest
from model.artifact_errors import ArtifactError
from model.choices import COMBINES, Combine
from model.form_builder import Validation, publish
from model.inference import Predictor
from model.metrics import evaluate
from model.native_logs import import_tensorflow

if TYPE_CHECKING:
    import keras

#: ``Manifest.architecture`` of a combined artifact; its members are listed under ``training["members"]``.
ENSEMBLE = "ensemble"
MEMBER_MEAN = "member_mean"
#: How the members' probabilities become one: their mean, or the sigmoid of their log-odds' mean.


log = logging.getLogger("audioset.ensemble")


class EnsembleError(ArtifactError):
    """The members cannot be served as one model: fewer than two, or different inputs or classes."""


@dataclass(frozen=True, slots=True)
class TrainedPart:
    """One trained network behind an artifact, as its manifest records it."""

    tag: str
    architecture: str
    hidden_units: int
    branches: int
    training: dict[str, Any]


def trained_parts(manifest: Manifest) -> list[TrainedPart]:
    """What ``audioset train`` made for an artifact: the model itself, or each member of an ensemble (nested too)."""
    if manifest.architecture != ENSEMBLE:
        return [
            TrainedPart(
                manifest.tag, manifest.architecture, manifest.hidden_units, manifest.branches, manifest.training
            )
        ]
    return [part for member in manifest.training["members"] for part in _member_parts(member)]


def _member_parts(member: dict[str, Any]) -> list[TrainedPart]:
    training: dict[str, Any] = member["training"]
    if member["architecture"] == ENSEMBLE:
        return [part for inner in training["members"] for part in _member_parts(inner)]
    branches = int(training.get("hyperparameters", {}).get("branches", 1))
    return [TrainedPart(member["artifact"], member["architecture"], int(member["hidden_units"]), branches, training)]


def member_networks(ensemble: keras.Model) -> list[keras.Model]:
    """An ensemble's members, in order: the sub-models of its graph."""
    import_tensorflow()
    import keras

    return [layer for layer in ensemble.layers if isinstance(layer, keras.Model)]


def combine(members: Sequence[keras.Model], name: str = ENSEMBLE, method: Combine = "mean") -> keras.Model:
    """One model whose output is the mean of the members' outputs (each member a named sub-model)."""
    if method not in COMBINES:
        raise EnsembleError(f"combine must be one of {', '.join(COMBINES)}, got {method!r}")
    if len(members) < 2:
        raise EnsembleError(f"an ensemble needs at least two members, got {len(members)}")
    shapes = {(tuple(m.input_shape), tuple(m.output_shape)) for m in members}
    if len(shapes) != 1:
        raise EnsembleError(f"members differ in input or output shape: {sorted(shapes)}")
    import_tensorflow()
    import keras

    import model.attention_pooling  # noqa: F401  (registers the custom layers)
    from model.ensemble_layers import LogitMean

    inputs = keras.Input(shape=members[0].input_shape[1:], name="embeddings")
    outputs = []
    for k, member in enumerate(members):
        config = member.get_config()
        base = re.sub(r"^member\d+_", "", member.name)  # a rebuilt ensemble's members keep their own names
        config["name"] = f"member{k}_{base}"  # sub-model names must be unique in the graph
        copy = keras.Model.from_config(config)
        copy.set_weights(member.get_weights())
        outputs.append(copy(inputs))
    mean = LogitMean(name=MEMBER_MEAN) if method == "logit-mean" else keras.layers.Average(name=MEMBER_MEAN)
    return keras.Model(inputs, mean(outputs), name=name)


def combine_artifacts(
    artifacts: Sequence[str | Path],
    output: str | Path,
    name: str,
    version: str,
    validation: tuple[np.ndarray, np.ndarray] | None = None,
    validation_description: str = "",
    method: Combine = "mean",
    compile_forms: bool = True,
) -> Manifest:
    """Write an artifact serving the mean of ``artifacts``; the members must share frames and classes.

    ``method`` is what is averaged (see :data:`Combine`); the manifest records it as ``training.combine``.
    A single ensemble artifact is rebuilt from its own members, so its rule can change without the members'
    artifacts at hand.

    With ``validation`` (embeddings, labels) the combined model is evaluated in float32 and the result
    recorded in the manifest, as training records a model's. Without ``compile_forms`` the artifact has no
    compiled serving forms (Keras serves it until ``audioset compile`` adds them).
    """
    if len(artifacts) < 2 and not (artifacts and read_manifest(artifacts[0]).architecture == ENSEMBLE):
        raise EnsembleError(
            f"an ensemble needs at least two member artifacts, got {len(artifacts)} "
            "(one is accepted only if it is an ensemble itself, to rebuild it with another --combine)"
        )
    if problem := label_problem(name, version):
        raise EnsembleError(problem)  # before any member loads
    target = Path(output)
    if (target / MANIFEST_NAME).exists() or (target / WEIGHTS_NAME).exists():
        raise EnsembleError(f"{output} already holds an artifact; choose another output folder or delete it first")
    loaded = [load(path) for path in artifacts]
    first = loaded[0][1]
    named: dict[str, str | Path] = {}
    for path, (_, manifest) in zip(artifacts, loaded, strict=True):
        if manifest.sha256 in named:  # a mean over a model twice weights it double without saying so
            raise EnsembleError(
                f"{named[manifest.sha256]} and {path} are the same model (weights sha256 {manifest.sha256[:12]}); "
                "name each member once"
            )
        named[manifest.sha256] = path
        if manifest.classes != first.classes:
            raise EnsembleError(f"{path}: its classes differ from {artifacts[0]}'s; members must share one class list")
        if manifest.frames != first.frames:
            raise EnsembleError(f"{path}: {manifest.frames} frames per clip, {artifacts[0]} has {first.frames}")
    if len(loaded) == 1:  # an ensemble rebuilt: its members as they are, their records as it keeps them
        nets = member_networks(loaded[0][0])
        members: list[dict[str, Any]] = list(first.training["members"])
    else:
        for path, (_, manifest) in zip(artifacts, loaded, strict=True):
            if manifest.architecture == ENSEMBLE:  # nesting weighs networks unevenly: say so
                inner = len(manifest.training["members"])
                log.warning(
                    "%s is an ensemble of %d members: they share its one vote of %d, so each weighs 1/%d against "
                    "1/%d for a single model; to weigh every network alike, name the members' own artifacts instead",
                    path,
                    inner,
                    len(loaded),
                    inner * len(loaded),
                    len(loaded),
                )
        nets = [net for net, _ in loaded]
        members = [
            {
                "artifact": manifest.tag,
                "architecture": manifest.architecture,
                "hidden_units": manifest.hidden_units,
                "sha256": manifest.sha256,
                "metrics": manifest.metrics,
                "training": manifest.training,
            }
            for _, manifest in loaded
        ]
    manifest = Manifest(
        name=name,
        version=version,
        architecture=ENSEMBLE,
        classes=first.classes,
        frames=first.frames,
        hidden_units=max(int(m["hidden_units"]) for m in members),
        training={"members": members, "combine": method},
        created=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    combined = combine(nets, name=ENSEMBLE, method=method)
    held_out = None
    if validation is not None:
        x, y = validation
        if y.shape[1] != len(first.classes) or x.shape[1] != first.frames:
            raise EnsembleError(
                f"validation data has {x.shape[1]} frames and {y.shape[1]} classes per clip; "
                f"the members take {first.frames} frames and predict {len(first.classes)} classes"
            )
        scores = Predictor.from_keras(combined, manifest, precision="float32").predict(x)
        manifest.training["validation_data"] = validation_description or f"{len(x)} labelled clips"
        measured = evaluate(y, scores)
        manifest.metrics = {"validation": measured.summary()}
        held_out = Validation(x, y, manifest.training["validation_data"], measured.mean_average_precision)
    return publish(combined, manifest, output, held_out, with_forms=compile_forms)
