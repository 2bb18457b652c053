"""Training: balanced mini-batches (Kong et al. 2018), validation, checkpoints, resume."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from model.atomic_files import save_npz, write_json
from model.clip_windows import clip_lengths, last_window_starts, tile_windows, window_starts
from model.labels import ClassLabel
from model.native_logs import import_tensorflow
from model.soft_targets import cross_fit_targets, fold_config, hide_missing, likely_missing, teacher_targets
from model.train_config import (
    FOLD_INDEPENDENT,
    LR_SCHEDULES,
    SOFT_TARGET_SETTINGS,
    TrainConfig,
    TrainingDataError,
    resume_conflicts,
)

CHECKPOINT_DIR = "checkpoint"
FOLDS_DIR = "folds"
STATE_NAME = "state.json"


# Cosine decay ends at this fraction of the initial learning rate rather than at zero.
COSINE_FLOOR = 0.01


def learning_rate_at(base: float, schedule: str, iteration: int, iterations: int) -> float:
    """The learning rate for ``iteration`` (0-based) of a run of ``iterations``.

    ``cosine`` decays from ``base`` to ``COSINE_FLOOR * base`` over the run; it is a
    function of the iteration alone, so a resumed run continues on the same curve.
    """
    if schedule == "constant":
        return base
    if schedule != "cosine":
        raise ValueError(f"unknown learning-rate schedule {schedule!r}; choose one of {', '.join(LR_SCHEDULES)}")
    import_tensorflow()
    import keras

    decay = keras.optimizers.schedules.CosineDecay(base, max(iterations, 1), alpha=COSINE_FLOOR)
    return float(decay(min(max(iteration, 0), iterations)))


def smooth_labels(targets: np.ndarray, amount: float) -> np.ndarray:
    """Pull binary targets towards 0.5 by ``amount``: 1 becomes ``1 - amount/2``, 0 becomes ``amount/2``."""
    return targets * (1.0 - amount) + 0.5 * amount


def mix_batch(
    x: np.ndarray, targets: np.ndarray, alpha: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Mixup on embeddings: each clip is blended with a random partner from the batch.

    The weight ``lam ~ Beta(alpha, alpha)`` is folded to ``max(lam, 1 - lam)`` so each
    mixed clip stays closest to its own original; targets are blended the same way.
    """
    lam = rng.beta(alpha, alpha, size=len(x)).astype(np.float32)
    lam = np.maximum(lam, 1.0 - lam)
    partner = rng.permutation(len(x))
    mixed_x = lam[:, None, None] * x + (1.0 - lam[:, None, None]) * x[partner]
    mixed_y = lam[:, None] * targets + (1.0 - lam[:, None]) * targets[partner]
    return mixed_x.astype(np.float32), mixed_y.astype(np.float32)


def frame_mix_batch(
    x: np.ndarray, targets: np.ndarray, max_share: float, rng: np.random.Generator, union: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Splice clips: up to ``max_share`` of each clip's frames come from a random partner in the batch.

    VGGish embeds each second of audio on its own, so a clip whose frames are partly
    another clip's is exactly the embedding of the spliced audio: a realistic new
    training clip, unlike a blend of embeddings. Each clip takes ``k`` frames, ``k``
    uniform in ``0..round(max_share * frames)``, at random positions. Targets are
    blended by the share of frames each clip gave (``union=False``), or are the union
    of both label sets (``union=True``: a sound heard in any second is present).
    """
    n, frames = x.shape[:2]
    most = round(max_share * frames)
    k = rng.integers(0, most + 1, size=n)
    partner = rng.permutation(n)
    ranks = rng.random((n, frames)).argsort(axis=1).argsort(axis=1)
    from_partner = ranks < k[:, None]
    mixed_x = np.where(from_partner[:, :, None], x[partner], x).astype(np.float32)
    if union:
        given = (k > 0)[:, None]
        mixed_y = np.where(given, np.maximum(targets, targets[partner]), targets)
    else:
        share = (k / frames).astype(np.float32)[:, None]
        mixed_y = (1.0 - share) * targets + share * targets[partner]
    return mixed_x, mixed_y.astype(np.float32)


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


def stratified_split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Hold out ``fraction`` of clips, stratified by each clip's rarest label.

    Multi-label data has no single stratum per clip; grouping by the rarest label
    keeps rare classes represented on both sides, which is what mAP needs.
    Unlabelled clips form their own stratum.
    """
    y = np.asarray(y, dtype=bool)
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"validation fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    counts = y.sum(axis=0)
    masked = np.where(y, counts[None, :], np.iinfo(np.int64).max)
    rarest = np.where(y.any(axis=1), masked.argmin(axis=1), -1)
    val: list[np.ndarray] = []
    for stratum in np.unique(rarest):
        members = np.flatnonzero(rarest == stratum)
        rng.shuffle(members)
        take = round(len(members) * fraction)
        if take == 0 and len(members) >= 2 and rng.random() < fraction * len(members):
            take = 1
        val.append(members[:take])
    val_idx = np.sort(np.concatenate(val)) if val else np.zeros(0, dtype=np.int64)
    train_mask = np.ones(len(y), dtype=bool)
    train_mask[val_idx] = False
    return np.flatnonzero(train_mask), val_idx


class BalancedSampler:
    """Mini-batches that walk the classes round-robin, one clip per class slot.

    Every class with a positive clip appears within ``ceil(classes / batch_size)``
    consecutive batches, however rare it is. Per-class queues are reshuffled
    when exhausted.
    """

    def __init__(self, y: np.ndarray, batch_size: int, seed: int = 0) -> None:
        y = np.asarray(y, dtype=bool)
        self.batch_size = batch_size
        self.rng = np.random.default_rng(seed)
        self.classes = [c for c in range(y.shape[1]) if y[:, c].any()]
        if not self.classes:
            raise TrainingDataError("no class has a positive clip; balanced sampling is impossible")
        self.members = [np.flatnonzero(y[:, c]) for c in self.classes]
        self.queues = [self.rng.permutation(m) for m in self.members]
        self.pointers = [0] * len(self.classes)
        self.next_class = 0

    def batches_to_cover(self) -> int:
        return math.ceil(len(self.classes) / self.batch_size)

    def __iter__(self) -> Iterator[np.ndarray]:
        return self

    def __next__(self) -> np.ndarray:
        batch = np.empty(self.batch_size, dtype=np.int64)
        for slot in range(self.batch_size):
            k = self.next_class
            if self.pointers[k] >= len(self.queues[k]):
                self.queues[k] = self.rng.permutation(self.members[k])
                self.pointers[k] = 0
            batch[slot] = self.queues[k][self.pointers[k]]
            self.pointers[k] += 1
            self.next_class = (k + 1) % len(self.classes)
        return batch


class ShuffleSampler:
    """Plain epochs of shuffled clips."""

    def __init__(self, n: int, batch_size: int, seed: int = 0) -> None:
        self.n = n
        self.batch_size = min(batch_size, n)
        self.rng = np.random.default_rng(seed)
        self.order = self.rng.permutation(n)
        self.pointer = 0

    def __iter__(self) -> Iterator[np.ndarray]:
        return self

    def __next__(self) -> np.ndarray:
        if self.pointer + self.batch_size > self.n:
            self.order = self.rng.permutation(self.n)
            self.pointer = 0
        batch = self.order[self.pointer : self.pointer + self.batch_size]
        self.pointer += self.batch_size
        return batch


def _sampler(config: TrainConfig, y: np.ndarray, seed: int) -> Iterator[np.ndarray]:
    if config.balanced:
        return BalancedSampler(y, config.batch_size, seed)
    return ShuffleSampler(len(y), config.batch_size, seed)


class WeightAverage:
    """An exponential moving average of the trainable weights (0 = off).

    Evaluation, the best checkpoint and the artifact use the averaged weights: a
    cheap stand-in for averaging predictions over checkpoints. The decay warms up
    as ``(1 + t) / (10 + t)`` so early averages are not dominated by the random init.
    """

    def __init__(self, variables: list[Any], decay: float, step: int = 0) -> None:
        self.variables = variables
        self.decay = decay
        self.step = step
        self.values = [np.array(v.numpy(), dtype=np.float32) for v in variables]

    def update(self) -> None:
        self.step += 1
        decay = min(self.decay, (1.0 + self.step) / (10.0 + self.step))
        for value, variable in zip(self.values, self.variables, strict=True):
            value += (1.0 - decay) * (variable.numpy() - value)

    def swap(self) -> None:
        """Exchange the live and the averaged weights (call twice to restore)."""
        for i, variable in enumerate(self.variables):
            live = np.array(variable.numpy(), dtype=np.float32)
            variable.assign(self.values[i])
            self.values[i] = live

    def save(self, path: Path) -> None:
        arrays: dict[str, Any] = {f"arr_{i}": value for i, value in enumerate(self.values)}
        save_npz(path, step=np.int64(self.step), **arrays)

    def load(self, path: Path) -> None:
        with np.load(path) as saved:
            self.step = int(saved["step"])
            self.values = [np.array(saved[f"arr_{i}"], dtype=np.float32) for i in range(len(self.variables))]


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
class _Fitted:
    """What one training loop leaves behind: the served net (best weights loaded) and its run state."""

    net: Any
    predictor: Any
    state: dict[str, Any]
    stopped_early: bool


def _refuse_other_run(
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


def _fit(
    config: TrainConfig,
    x: np.ndarray,
    y: np.ndarray,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    soft: np.ndarray | None,
    checkpoint: Path,
    fingerprint: str,
    manifest: Any,
    on_progress: Callable[[Progress], None] | None,
    stage: str = "",
    missing: np.ndarray | None = None,
) -> _Fitted:
    """One training loop over ``train_idx``, evaluated on ``val_idx``; resumes from ``checkpoint``.

    ``soft`` (aligned with ``train_idx``) are soft targets mixed into the labels with
    ``config.distill_weight``; ``missing`` (likewise aligned) marks the labels left out of
    the loss. On return the net holds the best checkpoint's weights.

    With ``precision="bfloat16"`` the net computes in bfloat16 (mixed precision: the
    weights stay float32); a float32 twin receives its weights for every evaluation, so
    validation mAP, the best checkpoint and the artifact are float32 as always.
    """
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
        _refuse_other_run(state, config, fingerprint, checkpoint.parent, ignored)
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
            "fingerprint": fingerprint,
            "config": config.to_json(),
        }
        net = with_precision(_build(config, y.shape[1], x.shape[1]), config.precision)
        # Each branch learns from its own loss (an ensemble), not from the mean (one wide net).
        trainable = net if config.branches == 1 else keras.Model(net.inputs[0], branch_outputs(net), name="branches")
        # Decoupled weight decay (AdamW): each step shrinks every weight by learning_rate * weight_decay.
        optimizer = keras.optimizers.Adam(config.learning_rate, weight_decay=config.weight_decay or None)
        trainable.compile(optimizer=optimizer, loss=_loss(config))

    average: WeightAverage | None = None
    if config.ema_decay > 0:
        average = WeightAverage(list(trainable.trainable_weights), config.ema_decay)
        if (checkpoint / "ema.npz").exists() and state["iteration"] > 0:
            average.load(checkpoint / "ema.npz")

    # Re-seed from the iteration so a resumed run draws fresh batches deterministically.
    sampler = _sampler(config, np.asarray(y[train_idx], dtype=bool), config.seed + int(state["iteration"]))
    mix_rng = np.random.default_rng([config.seed, int(state["iteration"]), 1])
    window_rng = np.random.default_rng([config.seed, int(state["iteration"]), 3])
    lengths = clip_lengths(x[train_idx]) if soft is not None and soft.ndim == 3 else None
    splice_rng = np.random.default_rng([config.seed, int(state["iteration"]), 2])
    served = net if config.precision == "float32" else _build(config, y.shape[1], x.shape[1])
    predictor = Predictor(served, manifest)
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
        if on_progress is not None:
            best = state["best_map"] if state["best_map"] >= 0 else None
            on_progress(Progress(iteration, loss_value, val_map, best, stage))

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
    return _Fitted(served, predictor, state, bool(stopped_early))


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
    soft: np.ndarray | None = None
    teachers: list[dict[str, str]] = []
    cross_fit: dict[str, Any] | None = None
    if config.teachers:
        soft, teachers = teacher_targets(
            config.teachers, x[train_idx], y.shape[1], fingerprint, config.validation_split, config.teacher_window
        )
    if config.cross_fit:

        def fit_fold(settings: TrainConfig, fold_idx: np.ndarray, folder: Path, stage: str) -> _Fitted:
            checkpoint = folder / CHECKPOINT_DIR
            return _fit(settings, x, y, fold_idx, val_idx, None, checkpoint, fingerprint, manifest, on_progress, stage)

        # A finished fold is reused, not trained again: only if it was trained as this run's folds would be.
        folds = fold_config(config)
        for state_path in sorted((output / FOLDS_DIR).glob(f"fold-*/{CHECKPOINT_DIR}/{STATE_NAME}")):
            state = json.loads(state_path.read_text(encoding="utf-8"))
            _refuse_other_run(state, folds, fingerprint, state_path.parent.parent, FOLD_INDEPENDENT)
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
    fitted = _fit(
        config, x, y, train_idx, val_idx, soft, output / CHECKPOINT_DIR, fingerprint, manifest, on_progress, "", missing
    )
    final = evaluate(np.asarray(y[val_idx], dtype=bool), fitted.predictor.predict(x[val_idx]))
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
    artifact.save(fitted.net, manifest, output / "model")
    return TrainResult(
        output / "model",
        int(state["best_iteration"]),
        float(final.mean_average_precision),
        list(state["history"]),
        int(state["iteration"]),
        fitted.stopped_early,
    )
