"""Training: balanced mini-batches (Kong et al. 2018), validation, checkpoints, resume.

The stages live in their own modules: :mod:`model.sampling`, :mod:`model.augmentation`,
:mod:`model.lr_schedule`, :mod:`model.weight_average` and the loop itself, :mod:`model.fit_loop`.
Here the data are checked, soft targets made, the loop run and the artifact written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from model.clip_windows import clip_lengths, last_window_starts
from model.fit_loop import CHECKPOINT_DIR, STATE_NAME, FitContext, Fitted, Progress, fit, refuse_other_run
from model.labels import ClassLabel
from model.sampling import stratified_split
from model.soft_targets import cross_fit_targets, fold_config, likely_missing, teacher_targets
from model.train_config import FOLD_INDEPENDENT, TrainConfig, TrainingDataError

FOLDS_DIR = "folds"
__all__ = ["CHECKPOINT_DIR", "FOLDS_DIR", "Progress", "TrainResult", "data_fingerprint", "train"]


@dataclass(slots=True)
class TrainResult:
    artifact: Path
    best_iteration: int
    best_map: float
    history: list[dict[str, float]] = field(default_factory=list)
    iterations_run: int = 0
    stopped_early: bool = False


def data_fingerprint(x: np.ndarray, y: np.ndarray) -> str:
    """A short content hash of the training arrays, recorded in the manifest."""
    digest = hashlib.sha256()
    digest.update(str((x.shape, str(x.dtype), y.shape)).encode())
    digest.update(np.ascontiguousarray(x).data)
    digest.update(np.packbits(np.asarray(y, dtype=bool)).data)
    return digest.hexdigest()[:16]


def train(
    config: TrainConfig,
    x: np.ndarray,
    y: np.ndarray,
    labels: Sequence[ClassLabel],
    output_dir: str | Path,
    on_progress: Callable[[Progress], None] | None = None,
    data_description: str = "",
    validation: tuple[np.ndarray, np.ndarray] | None = None,
    validation_description: str = "",
) -> TrainResult:
    """Train, evaluate every ``eval_every`` iterations, keep the best by validation mAP.

    State lives in ``output_dir/checkpoint`` (and ``output_dir/folds`` with
    ``cross_fit``); calling again with the same ``output_dir`` resumes from the last
    checkpoint instead of starting over. The best model is written as an artifact
    to ``output_dir/model``.

    ``validation`` (x, y) is a separate labelled set to select checkpoints on; then every
    clip of ``x`` is trained on and no split is held out.
    """
    from model import artifact
    from model.form_builder import Validation, publish
    from model.metrics import evaluate

    if x.ndim != 3 or x.shape[2] != 128:
        raise TrainingDataError(f"x must be (clips, frames, 128), got {x.shape}")
    if y.ndim != 2 or y.shape[0] != x.shape[0]:
        raise TrainingDataError(f"y must be (clips, classes) with {x.shape[0]} clips, got {y.shape}")
    if y.shape[1] != len(labels):
        raise TrainingDataError(f"the data is labelled with {y.shape[1]} classes, the class list names {len(labels)}")
    if config.teacher_window > x.shape[1]:
        window = config.teacher_window
        raise TrainingDataError(f"teacher_window {window} is longer than the clips ({x.shape[1]} frames)")
    output = Path(output_dir)
    fingerprint = data_fingerprint(x, y)
    if validation is not None:
        x_val, y_val = validation
        if x_val.shape[1:] != x.shape[1:] or y_val.ndim != 2 or y_val.shape[1] != y.shape[1]:
            raise TrainingDataError(
                f"validation data x{x_val.shape[1:]} y{y_val.shape[1:]} differs from the training data "
                f"x{x.shape[1:]} y{y.shape[1:]}"
            )
        if data_fingerprint(x_val, y_val) == fingerprint:
            raise TrainingDataError("the validation data is the training data; give a separate labelled file")
        # Validation clips sit after the training clips: indices keep every downstream step unchanged.
        fingerprint = data_fingerprint(x, y) + "+" + data_fingerprint(x_val, y_val)
        train_idx = np.arange(len(x))
        val_idx = np.arange(len(x), len(x) + len(x_val))
        x, y = np.concatenate([x, x_val]), np.concatenate([np.asarray(y, dtype=bool), np.asarray(y_val, dtype=bool)])
    else:
        train_idx, val_idx = stratified_split(y, *config.validation_split)
    manifest = artifact.Manifest(
        name=config.name,
        version=config.version,
        architecture=config.architecture,
        classes=list(labels),
        frames=int(x.shape[1]),
        hidden_units=config.hidden_units,
        branches=config.branches,
    )
    if config.precision == "bfloat16":
        from model.inference import cpu_supports_bfloat16

        if not cpu_supports_bfloat16():
            logging.getLogger("audioset.training").warning(
                "training in bfloat16 on a CPU without avx512_bf16/AMX: TensorFlow emulates it, "
                "which is slower than float32"
            )
    started = time.monotonic()
    loop = FitContext(config, x, y, train_idx, val_idx, output / CHECKPOINT_DIR, fingerprint, manifest, on_progress)
    soft: np.ndarray | None = None
    teachers: list[dict[str, str]] = []
    cross_fit: dict[str, Any] | None = None
    if config.teachers:
        soft, teachers = teacher_targets(
            config.teachers, x[train_idx], y.shape[1], fingerprint, config.validation_split, config.teacher_window
        )
    if config.cross_fit:

        def fit_fold(settings: TrainConfig, fold_idx: np.ndarray, folder: Path, stage: str) -> Fitted:
            fold = replace(loop, config=settings, train_idx=fold_idx, checkpoint=folder / CHECKPOINT_DIR, stage=stage)
            return fit(fold)

        # A finished fold is reused, not trained again: only if it was trained as this run's folds would be.
        folds = fold_config(config)
        for state_path in sorted((output / FOLDS_DIR).glob(f"fold-*/{CHECKPOINT_DIR}/{STATE_NAME}")):
            state = json.loads(state_path.read_text(encoding="utf-8"))
            refuse_other_run(state, folds, fingerprint, state_path.parent.parent, FOLD_INDEPENDENT)
        soft, cross_fit = cross_fit_targets(config, x, y, train_idx, val_idx, output / FOLDS_DIR, fit_fold)
    missing: np.ndarray | None = None
    if config.mask_negatives and soft is not None:
        last_starts = None
        if soft.ndim == 3:
            last_starts = last_window_starts(clip_lengths(x[train_idx]), config.teacher_window, x.shape[1])
        missing = likely_missing(y[train_idx], soft, config.mask_negatives, last_starts)
        logging.getLogger("audioset.training").info(
            "leaving %d likely missing labels out of the loss (%.1f per class)",
            int(missing.sum()),
            missing.sum() / y.shape[1],
        )
    fitted = fit(replace(loop, soft=soft, missing=missing))
    x_held, y_held = x[val_idx], np.asarray(y[val_idx], dtype=bool)
    final = evaluate(y_held, fitted.predictor.predict(x_held))
    state = fitted.state
    manifest.created = datetime.now(UTC).isoformat(timespec="seconds")
    manifest.training = {
        "data": data_description,
        "validation_data": validation_description or f"a {config.validation_fraction:g} split of the data",
        "data_fingerprint": fingerprint,
        "clips": len(train_idx) if validation is not None else int(x.shape[0]),
        "train_clips": len(train_idx),
        "validation_clips": len(val_idx),
        "best_iteration": int(state["best_iteration"]),
        "iterations_run": int(state["iteration"]),
        "stopped_early": fitted.stopped_early,
        "hyperparameters": config.to_json(),
        "teachers": teachers,
        "seconds": round(time.monotonic() - started, 1),
    }
    if cross_fit is not None:
        manifest.training["cross_fit"] = cross_fit
    if missing is not None:
        manifest.training["masked_negatives"] = int(missing.sum())
    manifest.metrics = {"validation": final.summary()}
    held_out = Validation(x_held, y_held, manifest.training["validation_data"], final.mean_average_precision)
    publish(fitted.net, manifest, output / "model", held_out, with_forms=config.compile_forms)
    return TrainResult(
        output / "model",
        int(state["best_iteration"]),
        float(final.mean_average_precision),
        list(state["history"]),
        int(state["iteration"]),
        fitted.stopped_early,
    )
