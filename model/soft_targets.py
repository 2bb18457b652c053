"""Soft targets: what teachers, or fold models on clips they never saw, believe about each training clip."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from model.atomic_files import save_npz
from model.clip_windows import window_scores
from model.train_config import TrainConfig, TrainingDataError, validation_split_of


class FittedFold(Protocol):
    """What a trained fold model leaves: a predictor with its best weights, and its run state."""

    predictor: Any
    state: dict[str, Any]


# A target left out of the loss (every loss in model.losses skips targets below 0).
UNKNOWN_TARGET = -1.0

# Trains (or resumes, or reopens when finished) one fold model: (config, training clip indices, its folder, stage).
FitFold = Callable[[TrainConfig, np.ndarray, Path, str], FittedFold]


def teacher_targets(
    teachers: Sequence[str],
    x: np.ndarray,
    classes: int,
    fingerprint: str,
    split: tuple[float, int],
    window: int = 0,
) -> tuple[np.ndarray, list[dict[str, str]]]:
    """The mean prediction of the teacher models on ``x``: soft targets for distillation.

    With ``window`` the teachers score every window of that many frames instead
    (``(clips, frames - window + 1, classes)``, float16 to keep 22k clips small).

    A teacher must not have seen this run's validation clips, which would make its
    validation mAP a lie: one trained on the same data with another split (or on all of
    it, validated on a file) is refused, as is one trained on this run's validation file.
    """

    from model.inference import Predictor

    log = logging.getLogger("audioset.training")
    ours, _, our_validation = fingerprint.partition("+")
    total = np.zeros((x.shape[0], x.shape[1] - window + 1 if window else 1, classes), dtype=np.float32)
    described: list[dict[str, str]] = []
    for path in teachers:
        predictor = Predictor.from_artifact(path)
        if predictor.classes != classes:
            raise TrainingDataError(f"teacher {path} predicts {predictor.classes} classes, the data has {classes}")
        training = predictor.manifest.training
        theirs, _, their_validation = str(training.get("data_fingerprint") or "").partition("+")
        if our_validation and theirs == our_validation:
            raise TrainingDataError(f"teacher {path} was trained on this run's validation data")
        if (
            not our_validation
            and theirs == ours
            and (their_validation or validation_split_of(training.get("hyperparameters", {})) != split)
        ):
            raise TrainingDataError(
                f"teacher {path} was trained on this data with another validation split; it has seen the "
                "validation clips. Train teachers with the same --validation-fraction and --split-seed."
            )
        if theirs and theirs != ours:
            log.warning("teacher %s was trained on other data (fingerprint differs)", path)
        if window:
            total += window_scores(predictor, x, window)
        else:
            total[:, 0] += predictor.predict(x)
        described.append({"model": predictor.tag, "sha256": predictor.manifest.sha256})
    total /= len(teachers)  # in place: with windows the sum is ~0.4 GB for 22k clips
    return (total.astype(np.float16) if window else total[:, 0]), described


def stratified_folds(y: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """A fold number per clip, dealt round-robin within each clip's rarest-label stratum.

    Every class with at least ``folds`` clips then has positives in every fold, so
    each fold model learns every class from ``(folds - 1) / folds`` of its clips.
    """
    y = np.asarray(y, dtype=bool)
    rng = np.random.default_rng(seed)
    counts = y.sum(axis=0)
    masked = np.where(y, counts[None, :], np.iinfo(np.int64).max)
    rarest = np.where(y.any(axis=1), masked.argmin(axis=1), -1)
    fold_of = np.empty(len(y), dtype=np.int64)
    offset = 0
    for stratum in np.unique(rarest):
        members = np.flatnonzero(rarest == stratum)
        rng.shuffle(members)
        fold_of[members] = (np.arange(len(members)) + offset) % folds
        offset += len(members)
    return fold_of


def _fold_scores(path: Path, held_shape: tuple[int, ...]) -> Any:
    """A fold's saved scores (an open npz), refused when its held-out clips are not this run's."""
    saved = np.load(path)
    if saved["held"].shape != held_shape:
        saved.close()
        raise TrainingDataError(f"{path} does not match this data; choose a new output directory")
    return saved


def fold_config(config: TrainConfig) -> TrainConfig:
    """The settings of a run's --cross-fit fold models: the run's own, but for its ``fold_*`` ones, on hard labels."""
    return config.but(
        cross_fit=0,
        teachers=[],
        architecture=config.fold_architecture or config.architecture,
        hidden_units=config.fold_hidden_units or config.hidden_units,
        iterations=config.fold_iterations or config.iterations,
        fold_hidden_units=None,
        fold_architecture=None,
        fold_iterations=None,
        teacher_window=0,
        mask_negatives=0.0,
    )


def cross_fit_targets(
    config: TrainConfig,
    x: np.ndarray,
    y: np.ndarray,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    folder: Path,
    fit_fold: FitFold,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Out-of-fold predictions for every training clip: soft targets no model has memorised.

    The training clips are dealt into ``config.cross_fit`` folds; a model trained on the
    other folds predicts each one. Unlike a teacher's predictions on its own training
    clips (which echo the labels), these carry what a model really believes about a clip,
    including labels the annotators missed. Fold models share every setting of the run
    except the ``fold_*`` ones (a wide or slow model can learn from cheaper folds, or from another kind).
    Each fold is a resumable run of its own under ``folder/fold-K`` (``fit_fold`` trains it,
    validated on ``val_idx``); a finished fold is not trained again.

    With ``config.teacher_window`` each fold model also scores every window of the clips
    it did not see, and those window scores (float16) are the soft targets. A finished
    fold without them is reopened from its best checkpoint to score them, untrained.
    """
    from model.metrics import evaluate

    k = config.cross_fit
    folds_config = fold_config(config)
    window = config.teacher_window
    fold_of = stratified_folds(np.asarray(y[train_idx], dtype=bool), k, config.seed)
    soft = np.zeros((len(train_idx), y.shape[1]), dtype=np.float32)
    soft_windows = np.zeros((len(train_idx), x.shape[1] - window + 1 if window else 0, y.shape[1]), np.float16)
    validation = np.zeros((len(val_idx), y.shape[1]), dtype=np.float32)
    summary: dict[str, Any] = {"folds": k, "fold_maps": [], "fold_best_iterations": []}
    for fold in range(k):
        where = folder / f"fold-{fold}"
        held = np.flatnonzero(fold_of == fold)
        done = where / "predictions.npz"
        windows_done = where / f"windows-{window}.npz"
        fitted = None
        if not done.exists() or (window and not windows_done.exists()):
            fitted = fit_fold(folds_config, train_idx[fold_of != fold], where, f"fold {fold + 1}/{k}")
        if fitted is not None and not done.exists():
            save_npz(
                done,
                held=fitted.predictor.predict(x[train_idx[held]]),
                validation=fitted.predictor.predict(x[val_idx]),
                best_map=np.float64(fitted.state["best_map"]),
                best_iteration=np.int64(fitted.state["best_iteration"]),
            )
        if fitted is not None and window and not windows_done.exists():
            logging.getLogger("audioset.training").info(
                "fold %d/%d: scoring %d-frame windows of the %d clips it did not see", fold + 1, k, window, len(held)
            )
            save_npz(windows_done, held=window_scores(fitted.predictor, x[train_idx[held]], window).astype(np.float16))
        if window:
            with _fold_scores(windows_done, (len(held), *soft_windows.shape[1:])) as saved:
                soft_windows[held] = saved["held"]
        with _fold_scores(done, (len(held), y.shape[1])) as saved:
            soft[held] = saved["held"]
            validation += saved["validation"] / k
            summary["fold_maps"].append(float(saved["best_map"]))
            summary["fold_best_iterations"].append(int(saved["best_iteration"]))
    y_val = np.asarray(y[val_idx], dtype=bool)
    summary["fold_ensemble_map"] = evaluate(y_val, validation).mean_average_precision
    summary["out_of_fold_map"] = evaluate(np.asarray(y[train_idx], dtype=bool), soft).mean_average_precision
    return (soft_windows if window else soft), summary


def likely_missing(
    labels: np.ndarray, scores: np.ndarray, per_positive: float, last_starts: np.ndarray | None = None
) -> np.ndarray:
    """Per class, the unlabelled clips the teachers score highest: up to ``per_positive`` per labelled clip.

    AudioSet's annotators miss many sounds that are present, and cross-entropy trains on
    each miss as a confident "absent". Fonseca et al. (2020) leave the negatives a teacher
    is surest about out of the loss instead; counting per labelled clip keeps a rare
    class from losing more of its negatives than a common one. Window scores
    ``(clips, windows, classes)`` rank a clip by its highest-scored window up to its
    last heard window start (``last_starts``; every window when not given).
    """
    labelled = np.asarray(labels, dtype=bool)
    if scores.ndim == 3:
        windows = scores.shape[1]
        last = np.full(len(scores), windows - 1) if last_starts is None else np.asarray(last_starts)
        heard = np.arange(windows)[None, :] <= last[:, None]
        scores = np.where(heard[:, :, None], scores, -np.inf).max(axis=1)  # stays float16: half a float32 copy
    missing = np.zeros(labelled.shape, dtype=bool)
    for c in range(labelled.shape[1]):
        negatives = np.flatnonzero(~labelled[:, c])
        count = min(round(per_positive * int(labelled[:, c].sum())), len(negatives))
        if count > 0:
            missing[negatives[np.argpartition(-scores[negatives, c], count - 1)[:count]], c] = True
    return missing


def hide_missing(targets: np.ndarray, missing: np.ndarray, labelled: np.ndarray) -> np.ndarray:
    """Targets with the likely missing labels set to ``UNKNOWN_TARGET``.

    The three arrays have been through the same splicing or mixup, so a mixed clip's
    label is unknown when either source clip's was, unless either source is labelled with it.
    """
    return np.where((missing > 0) & (labelled == 0), np.float32(UNKNOWN_TARGET), targets).astype(np.float32)
