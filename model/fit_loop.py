"""One training loop: batches, augmentation, evaluation, the best checkpoint and resume from the last one."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from model.atomic_files import write_json
from model.augmentation import frame_mix_batch, mix_batch, smooth_labels
from model.clip_windows import clip_lengths, tile_windows, window_starts
from model.lr_schedule import learning_rate_at
from model.native_logs import import_tensorflow
from model.sampling import sampler_for
from model.soft_targets import hide_missing
from model.train_config import FOLD_INDEPENDENT, SOFT_TARGET_SETTINGS, TrainConfig, TrainingDataError, resume_conflicts
from model.weight_average import WeightAverage

CHECKPOINT_DIR = "checkpoint"
STATE_NAME = "state.json"


def evaluations_since_best(history: list[dict[str, float]], best_iteration: int) -> int:
    """How many evaluations in a row have not beaten the best validation mAP (early stopping counts these)."""
    return sum(1 for entry in history if entry["iteration"] > best_iteration)


@dataclass(slots=True)
class Progress:
    iteration: int
    loss: float
    validation_map: float | None
    best_map: float | None
    stage: str = ""  # "" for the model itself, "fold K/N" while cross-fitting


def _build(config: TrainConfig, classes: int, frames: int) -> Any:
    """A fresh float32 model of the configured architecture."""
    from model.architectures import build_model

    return build_model(
        config.architecture,
        classes=classes,
        frames=frames,
        hidden_units=config.hidden_units,
        dropout=config.dropout,
        branches=config.branches,
    )


def _serving_model(trainable: Any, architecture: str) -> Any:
    """The model that is served: the trained model itself, or the mean over its branches."""
    import_tensorflow()
    import keras

    from model.architectures import BRANCH_MEAN

    if len(trainable.outputs) == 1:
        return trainable
    mean = keras.layers.Average(name=BRANCH_MEAN)(trainable.outputs)
    return keras.Model(trainable.inputs[0], mean, name=architecture)


def _loss(config: TrainConfig) -> Any:
    """What the net is compiled with (a registered class, so a resumed run's last.keras loads in safe mode)."""
    if config.loss == "asymmetric":
        from model.losses import AsymmetricLoss

        return AsymmetricLoss(gamma=config.negative_gamma, clip=config.negative_clip)
    if config.mask_negatives:
        from model.losses import MaskedBinaryCrossentropy

        return MaskedBinaryCrossentropy()
    return "binary_crossentropy"


def _mean_loss(value: Any) -> float:
    """Keras returns the summed loss (and per-output losses) for several outputs; report the per-branch mean."""
    if isinstance(value, list | tuple):
        total = float(value[0])
        return total / max(1, len(value) - 1) if len(value) > 1 else total
    return float(value)


@dataclass(slots=True)
class Fitted:
    """What one training loop leaves behind: the served net (best weights loaded) and its run state."""

    net: Any
    predictor: Any
    state: dict[str, Any]
    stopped_early: bool


def refuse_other_run(
    state: dict[str, Any], config: TrainConfig, fingerprint: str, folder: Path, ignored: frozenset[str]
) -> None:
    """A run folder is resumed (or its finished folds reused) only with its own data and settings."""
    changed = resume_conflicts(state["config"], config, ignored)
    if state["fingerprint"] != fingerprint:
        changed.insert(0, "the training data differ")
    if changed:
        raise TrainingDataError(
            f"{folder} holds a run with other data or settings ({'; '.join(changed)}): "
            "use the run's settings to resume it, or choose a new --output"
        )


@dataclass(frozen=True, slots=True)
class FitContext:
    """Everything one training loop reads: its settings, the data, its run folder and whom to tell.

    ``soft`` (aligned with ``train_idx``) are soft targets mixed into the labels with
    ``config.distill_weight``; ``missing`` (likewise aligned) marks the labels left out of the loss.
    """

    config: TrainConfig
    x: np.ndarray
    y: np.ndarray
    train_idx: np.ndarray
    val_idx: np.ndarray
    checkpoint: Path
    fingerprint: str
    manifest: Any
    on_progress: Callable[[Progress], None] | None = None
    stage: str = ""  # "" for the model itself, "fold K/N" while cross-fitting
    soft: np.ndarray | None = None
    missing: np.ndarray | None = None


def fit(ctx: FitContext) -> Fitted:
    """One training loop over ``train_idx``, evaluated on ``val_idx``; resumes from ``checkpoint``.
    On return the net holds the best checkpoint's weights.

    With ``precision="bfloat16"`` the net computes in bfloat16 (mixed precision: the
    weights stay float32); a float32 twin receives its weights for every evaluation, so
    validation mAP, the best checkpoint and the artifact are float32 as always.
    """
    config, x, y, train_idx, val_idx = ctx.config, ctx.x, ctx.y, ctx.train_idx, ctx.val_idx
    checkpoint, soft, missing, stage = ctx.checkpoint, ctx.soft, ctx.missing, ctx.stage
    import_tensorflow()
    import keras

    from model.architectures import branch_outputs
    from model.inference import Predictor, dequantize, with_precision
    from model.metrics import evaluate

    checkpoint.mkdir(parents=True, exist_ok=True)
    x_val, y_val = x[val_idx], np.asarray(y[val_idx], dtype=bool)
    state_path = checkpoint / STATE_NAME
    keras.utils.set_random_seed(config.seed)
    if state_path.exists():
        state = json.loads(state_path.read_text(encoding="utf-8"))
        ignored = FOLD_INDEPENDENT if stage else SOFT_TARGET_SETTINGS if soft is None else frozenset()
        refuse_other_run(state, config, ctx.fingerprint, checkpoint.parent, ignored)
        state["config"] = config.to_json()
        import model.attention_pooling
        import model.losses  # noqa: F401  (registers the classes that safe-mode loading looks up)

        trainable = keras.models.load_model(checkpoint / "last.keras", safe_mode=True)
        net = _serving_model(trainable, config.architecture)
    else:
        state = {
            "iteration": 0,
            "best_map": -1.0,
            "best_iteration": 0,
            "history": [],
            "fingerprint": ctx.fingerprint,
            "config": config.to_json(),
        }
        net = with_precision(_build(config, y.shape[1], x.shape[1]), config.precision)
        # Each branch learns from its own loss (an ensemble), not from the mean (one wide net).
        trainable = net if config.branches == 1 else keras.Model(net.inputs[0], branch_outputs(net), name="branches")
        # Decoupled weight decay (AdamW): each step shrinks every weight by learning_rate * weight_decay.
        optimizer = keras.optimizers.Adam(config.learning_rate, weight_decay=config.weight_decay or None)
        trainable.compile(optimizer=optimizer, loss=_loss(config))
    if not trainable.optimizer.built:
        # Built here, not inside the first step: a step that creates variables is traced twice (about 0.7 s).
        trainable.optimizer.build(trainable.trainable_variables)

    average: WeightAverage | None = None
    if config.ema_decay > 0:
        average = WeightAverage(list(trainable.trainable_weights), config.ema_decay)
        if (checkpoint / "ema.npz").exists() and state["iteration"] > 0:
            average.load(checkpoint / "ema.npz")

    # Re-seed from the iteration so a resumed run draws fresh batches deterministically.
    sampler = sampler_for(config, np.asarray(y[train_idx], dtype=bool), config.seed + int(state["iteration"]))
    mix_rng = np.random.default_rng([config.seed, int(state["iteration"]), 1])
    window_rng = np.random.default_rng([config.seed, int(state["iteration"]), 3])
    lengths = clip_lengths(x[train_idx]) if soft is not None and soft.ndim == 3 else None
    splice_rng = np.random.default_rng([config.seed, int(state["iteration"]), 2])
    served = net if config.precision == "float32" else _build(config, y.shape[1], x.shape[1])
    predictor = Predictor.from_keras(served, ctx.manifest)
    loss_value = float("nan")

    def stalled() -> bool:
        since = evaluations_since_best(state["history"], int(state["best_iteration"]))
        return config.patience > 0 and since >= config.patience

    while state["iteration"] < config.iterations and not stalled():
        positions = next(sampler)
        batch = train_idx[positions]
        targets = np.asarray(y[batch], dtype=np.float32)
        clips = x[batch]
        if soft is not None:
            if lengths is None:
                taught = soft[positions]
            else:
                # Pseudo strong labels: a window of each clip, against what the teachers heard in it.
                starts = window_starts(lengths[positions], config.teacher_window, x.shape[1], window_rng)
                clips = tile_windows(clips, starts, config.teacher_window)
                taught = soft[positions, starts].astype(np.float32)  # only the window each clip shows
            # Cross-entropy is linear in its target: mixing targets mixes the hard and the distillation loss.
            targets = (1.0 - config.distill_weight) * targets + config.distill_weight * taught
        if config.label_smoothing > 0:
            targets = smooth_labels(targets, config.label_smoothing)
        if missing is not None:
            # Spliced and mixed beside the targets, then split off again: see hide_missing.
            targets = np.concatenate([targets, missing[positions], y[batch]], axis=1, dtype=np.float32)
        inputs = dequantize(clips)
        if config.frame_mix > 0:
            inputs, targets = frame_mix_batch(
                inputs, targets, config.frame_mix, splice_rng, union=config.frame_mix_targets == "union"
            )
        if config.mixup > 0:
            inputs, targets = mix_batch(inputs, targets, config.mixup, mix_rng)
        if missing is not None:
            targets = hide_missing(*np.split(targets, 3, axis=1))
        if config.lr_schedule != "constant":
            trainable.optimizer.learning_rate.assign(
                learning_rate_at(config.learning_rate, config.lr_schedule, int(state["iteration"]), config.iterations)
            )
        per_output = targets if config.branches == 1 else [targets] * config.branches
        loss_value = _mean_loss(trainable.train_on_batch(inputs, per_output))
        if average is not None:
            average.update()
        state["iteration"] += 1
        iteration = int(state["iteration"])
        val_map: float | None = None
        if iteration % config.eval_every == 0 or iteration == config.iterations:
            if average is not None:
                average.swap()
            if served is not net:
                served.set_weights(net.get_weights())
            val_map = evaluate(y_val, predictor.predict(x_val)).mean_average_precision
            state["history"].append({"iteration": iteration, "loss": loss_value, "validation_map": val_map})
            if val_map > state["best_map"]:
                state["best_map"], state["best_iteration"] = val_map, iteration
                served.save_weights(checkpoint / "best.weights.h5")
            if average is not None:
                average.swap()
        if iteration % config.checkpoint_every == 0 or iteration == config.iterations:
            trainable.save(checkpoint / "last.keras")
            if average is not None:
                average.save(checkpoint / "ema.npz")
            write_json(state_path, state)
        if ctx.on_progress is not None:
            best = state["best_map"] if state["best_map"] >= 0 else None
            ctx.on_progress(Progress(iteration, loss_value, val_map, best, stage))

    stopped_early = stalled() and state["iteration"] < config.iterations
    trainable.save(checkpoint / "last.keras")
    if average is not None:
        average.save(checkpoint / "ema.npz")
    write_json(state_path, state)
    if not (checkpoint / "best.weights.h5").exists():
        raise TrainingDataError(
            f"{checkpoint.parent} has no evaluated checkpoint yet; train for at least --eval-every iterations"
        )
    served.load_weights(checkpoint / "best.weights.h5")
    return Fitted(served, predictor, state, bool(stopped_early))
