"""Training: balanced mini-batches (Kong et al. 2018), validation, checkpoints, resume."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from model.labels import ClassLabel
from model.native_logs import import_tensorflow

CHECKPOINT_DIR = "checkpoint"
FOLDS_DIR = "folds"
STATE_NAME = "state.json"
LR_SCHEDULES = ("constant", "cosine")
TRAIN_PRECISIONS = ("float32", "bfloat16")
FRAME_MIX_TARGETS = ("share", "union")
LOSSES = ("binary_crossentropy", "asymmetric")


class TrainingDataError(ValueError):
    """Training data is unusable: wrong shapes, no labels, class count mismatch."""


class TrainConfigError(ValueError):
    """A training setting is out of range (checked when the config is made, before any data loads)."""


def option(default: Any, help: str = "", **cli: Any) -> Any:
    """A training setting: its default, and what ``audioset train`` says and checks about it.

    ``cli`` keys: ``flag`` (the option, default ``--field-name``), ``choices``, ``min``/``max`` (with
    ``min_open``/``max_open``), ``multiple``, ``hidden`` (no option of its own), ``values`` (a choice
    mapped onto the field's value). The CLI builds every option from these, so a new setting is one edit.
    """
    metadata = {"help": help, **cli}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def _out_of_range(value: Any, meta: Mapping[str, Any]) -> str:
    """What ``value`` must be under a field's ``choices``/``min``/``max`` metadata, or "" when it is."""
    if "choices" in meta and value not in meta["choices"]:
        return f"one of {', '.join(meta['choices'])}, got {value!r}"
    if value is None or not ({"min", "max"} & set(meta)):
        return ""
    low, high = meta.get("min"), meta.get("max")
    too_low = low is not None and (value <= low if meta.get("min_open") else value < low)
    too_high = high is not None and (value >= high if meta.get("max_open") else value > high)
    if not (too_low or too_high):
        return ""
    if high is None:
        return f"{'>' if meta.get('min_open') else '>='} {low}, got {value}"
    if low is None:
        return f"{'<' if meta.get('max_open') else '<='} {high}, got {value}"
    return f"in {'(' if meta.get('min_open') else '['}{low}, {high}{')' if meta.get('max_open') else ']'}, got {value}"


@dataclass(slots=True)
class TrainConfig:
    architecture: str = option("decision_level_multi_attention", "Network: one of model.architectures.ARCHITECTURES.")
    batch_size: int = option(500, "Clips per mini-batch.", min=1)
    learning_rate: float = option(1e-3, "Adam learning rate.", min=0, min_open=True)
    weight_decay: float = option(
        0.0, "Decoupled weight decay (AdamW): each step shrinks every weight by learning-rate x this; 0 = off.", min=0
    )
    iterations: int = option(4000, "Mini-batches to train for.", min=1)
    dropout: float = option(0.5, "Dropout after each dense block.", min=0, max=1, max_open=True)
    hidden_units: int = option(1024, "Width of each branch.", min=1)
    branches: int = option(
        1, "Independent copies trained side by side and served as their mean (an ensemble in one model).", min=1
    )
    ema_decay: float = option(
        0.0,
        "Evaluate and keep an exponential moving average of the weights (e.g. 0.999); 0 = off.",
        min=0,
        max=1,
        max_open=True,
    )
    teachers: list[str] = option(  # noqa: RUF009 (option() returns a field with a default_factory)
        [],
        "Distil from this model artifact (repeat for an ensemble): their mean prediction is a soft target.",
        flag="--teacher",
        multiple=True,
    )
    teacher_window: int = option(
        0,
        "With --teacher or --cross-fit: the teachers (or the fold models, on the clips they did not see) score "
        "windows of this many frames and the model trains on such windows against those scores (pseudo strong "
        "labels); 0 = whole clips.",
        min=0,
    )
    distill_weight: float = option(
        0.5, "Weight of the soft targets (--teacher or --cross-fit) against the labels.", min=0, max=1
    )
    cross_fit: int = option(
        0, "Train K fold models first; each clip's out-of-fold prediction becomes its soft target. 0 = off.", min=0
    )
    fold_hidden_units: int | None = option(
        None,
        "Width of the --cross-fit fold models (default: --hidden-units): a wide model can learn from narrower folds.",
        min=1,
    )
    mixup: float = option(0.0, "Mixup on embeddings with Beta(ALPHA, ALPHA) weights (e.g. 0.3); 0 = off.", min=0)
    frame_mix: float = option(
        0.0,
        "Splice clips: up to this share of each clip's frames come from another clip in the batch; 0 = off.",
        min=0,
        max=1,
    )
    frame_mix_targets: str = option(
        "share",
        "Targets of a spliced clip: blended by frame share, or the union of both label sets.",
        choices=FRAME_MIX_TARGETS,
    )
    label_smoothing: float = option(
        0.0, "Pull the 0/1 targets towards 0.5 by this amount (e.g. 0.1); 0 = off.", min=0, max=1, max_open=True
    )
    loss: str = option(
        "binary_crossentropy",
        "asymmetric: weaken the push on negatives (Ridnik et al. 2021), for labels that miss present sounds.",
        choices=LOSSES,
    )
    negative_gamma: float = option(4.0, "--loss asymmetric: focusing power on the negatives (0 = none).", min=0)
    negative_clip: float = option(
        0.05, "--loss asymmetric: a negative scored below this costs nothing.", min=0, max=1, max_open=True
    )
    lr_schedule: str = option(
        "constant", "cosine: decay the learning rate to 1% of --learning-rate over --iterations.", choices=LR_SCHEDULES
    )
    balanced: bool = option(
        True,
        "balanced: classes drawn round-robin into each mini-batch (Kong et al.); shuffle: plain shuffling.",
        flag="--sampling",
        values={"balanced": True, "shuffle": False},
    )
    precision: str = option(
        "float32",
        "Training arithmetic. bfloat16: mixed precision (float32 weights), about 1.5x faster on CPUs with "
        "avx512_bf16/AMX; validation and the artifact stay float32.",
        choices=TRAIN_PRECISIONS,
    )
    patience: int = option(
        0,
        "Stop after this many evaluations in a row without a better validation mAP; 0 = run all iterations.",
        min=0,
    )
    validation_fraction: float = option(
        0.1,
        "Share of the clips held out for validation (unless --validation gives a file).",
        min=0,
        max=1,
        min_open=True,
        max_open=True,
    )
    eval_every: int = option(250, "Iterations between evaluations (and checkpoints).", min=1)
    checkpoint_every: int = option(250, hidden=True)  # follows --eval-every on the command line
    seed: int = option(0, "Seed of the weights and of the batches.")
    split_seed: int | None = option(
        None, "Seed of the validation hold-out (default: --seed). Keep it fixed to compare runs or distil between them."
    )
    name: str = option("audioset-model", "Model name, written into every result's model field.")
    version: str = option("1", "Model version (results say name@version).")

    def __post_init__(self) -> None:
        # The limits and choices are the ones `audioset train` enforces, read from the same field metadata,
        # so a queued run's YAML or a library caller is held to exactly what the command line is.
        for spec in fields(self):
            problem = _out_of_range(getattr(self, spec.name), spec.metadata)
            if problem:
                raise TrainConfigError(f"{spec.name} must be {problem}")
        if self.cross_fit == 1:
            raise TrainConfigError(f"cross_fit must be 0 (off) or a number of folds >= 2, got {self.cross_fit}")
        if self.teacher_window and not (self.teachers or self.cross_fit):
            raise TrainConfigError(
                "teacher_window needs --teacher or --cross-fit (the models that score each window), "
                f"got {self.teacher_window}"
            )
        if self.cross_fit and self.teachers:
            raise TrainConfigError("cross_fit and teachers both set the soft targets; choose one")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def validation_split(self) -> tuple[float, int]:
        """(fraction, seed) of the hold-out: runs that share it are comparable and can teach each other."""
        return self.validation_fraction, self.seed if self.split_seed is None else self.split_seed


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


def clip_lengths(x: np.ndarray) -> np.ndarray:
    """Frames up to each clip's last non-padding frame (clips under 10 s are zero-padded at the end)."""
    heard = (np.asarray(x) != 0).any(axis=2)
    return np.asarray(np.where(heard.any(axis=1), x.shape[1] - heard[:, ::-1].argmax(axis=1), x.shape[1]))


def tile_windows(x: np.ndarray, starts: np.ndarray, width: int) -> np.ndarray:
    """Each clip's window of ``width`` frames from its start, repeated to the clip's frame count.

    Attention pooling is a weighted mean over frames, so a window repeated to fill the
    clip is scored as the window itself (exactly when ``width`` divides the frame count),
    by any of the pooling networks, without a model of another input shape.
    """
    frames = x.shape[1]
    positions = np.asarray(starts)[:, None] + np.arange(frames)[None, :] % width
    return np.asarray(np.take_along_axis(x, positions[:, :, None], axis=1))


def window_starts(lengths: np.ndarray, width: int, frames: int, rng: np.random.Generator) -> np.ndarray:
    """A random window start per clip, within the clip's heard frames where it has ``width`` of them."""
    last = np.clip(np.minimum(lengths, frames) - width, 0, frames - width)
    starts: np.ndarray = (rng.random(len(lengths)) * (last + 1)).astype(np.int64)
    return starts


# Settings a resumed run may change: extend a run, stop it now (iterations <= reached), or add early stopping.
RESUMABLE = frozenset({"iterations", "patience"})


def resume_conflicts(saved: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    """The settings a resumed run may not change, each as ``name: saved -> wanted``."""
    return [
        f"{name.replace('_', '-')}: {saved.get(name)!r} -> {wanted.get(name)!r}"
        for name in sorted(set(saved) | set(wanted))
        if name not in RESUMABLE and saved.get(name) != wanted.get(name)
    ]


def evaluations_since_best(history: list[dict[str, float]], best_iteration: int) -> int:
    """How many evaluations in a row have not beaten the best validation mAP (early stopping counts these)."""
    return sum(1 for entry in history if entry["iteration"] > best_iteration)


def validation_split_of(hyperparameters: dict[str, Any]) -> tuple[float, int]:
    """The hold-out a trained model's manifest records (older manifests split by ``seed``)."""
    split_seed = hyperparameters.get("split_seed")
    seed = hyperparameters.get("seed", 0) if split_seed is None else split_seed
    return float(hyperparameters.get("validation_fraction", 0.1)), int(seed)


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


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


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
        tmp = path.with_name(path.stem + ".tmp.npz")
        arrays: dict[str, Any] = {f"arr_{i}": value for i, value in enumerate(self.values)}
        np.savez(tmp, step=np.int64(self.step), **arrays)
        os.replace(tmp, path)

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
    mean = total / len(teachers)
    return (mean.astype(np.float16) if window else mean[:, 0]), described


def window_scores(predictor: Any, x: np.ndarray, window: int) -> np.ndarray:
    """What ``predictor`` hears in each ``window``-frame window of each clip: (clips, windows, classes)."""
    starts = range(x.shape[1] - window + 1)
    return np.stack([predictor.predict(tile_windows(x, np.full(len(x), start), window)) for start in starts], axis=1)


def _loss(config: TrainConfig) -> Any:
    """What the net is compiled with (a registered class, so a resumed run's last.keras loads in safe mode)."""
    if config.loss == "asymmetric":
        from model.losses import AsymmetricLoss

        return AsymmetricLoss(gamma=config.negative_gamma, clip=config.negative_clip)
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
) -> _Fitted:
    """One training loop over ``train_idx``, evaluated on ``val_idx``; resumes from ``checkpoint``.

    ``soft`` (aligned with ``train_idx``) are soft targets mixed into the labels with
    ``config.distill_weight``. On return the net holds the best checkpoint's weights.

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
        # A run saved before a setting existed ran with that setting's default.
        saved = {**TrainConfig().to_json(), **state["config"]}
        changed = resume_conflicts(saved, config.to_json())
        if state["fingerprint"] != fingerprint:
            changed.insert(0, "the training data differ")
        if changed:
            raise TrainingDataError(
                f"{checkpoint.parent} holds a run with other data or settings ({'; '.join(changed)}): "
                "use the run's settings to resume it, or choose a new --output"
            )
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
        inputs = dequantize(clips)
        if config.frame_mix > 0:
            inputs, targets = frame_mix_batch(
                inputs, targets, config.frame_mix, splice_rng, union=config.frame_mix_targets == "union"
            )
        if config.mixup > 0:
            inputs, targets = mix_batch(inputs, targets, config.mixup, mix_rng)
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
            _write_json(state_path, state)
        if on_progress is not None:
            best = state["best_map"] if state["best_map"] >= 0 else None
            on_progress(Progress(iteration, loss_value, val_map, best, stage))

    stopped_early = stalled() and state["iteration"] < config.iterations
    trainable.save(checkpoint / "last.keras")
    if average is not None:
        average.save(checkpoint / "ema.npz")
    _write_json(state_path, state)
    if not (checkpoint / "best.weights.h5").exists():
        raise TrainingDataError(
            f"{checkpoint.parent} has no evaluated checkpoint yet; train for at least --eval-every iterations"
        )
    served.load_weights(checkpoint / "best.weights.h5")
    return _Fitted(served, predictor, state, bool(stopped_early))


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


def cross_fit_targets(
    config: TrainConfig,
    x: np.ndarray,
    y: np.ndarray,
    train_idx: np.ndarray,
    val_idx: np.ndarray,
    fingerprint: str,
    manifest: Any,
    folder: Path,
    on_progress: Callable[[Progress], None] | None,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Out-of-fold predictions for every training clip: soft targets no model has memorised.

    The training clips are dealt into ``config.cross_fit`` folds; a model trained on the
    other folds predicts each one. Unlike a teacher's predictions on its own training
    clips (which echo the labels), these carry what a model really believes about a clip,
    including labels the annotators missed. Fold models share every setting of the run
    except their width (``fold_hidden_units``: a wide model can learn from cheaper folds).
    Each fold is a resumable run of its own under ``folder/fold-K``; a finished fold is
    not trained again.

    With ``config.teacher_window`` each fold model also scores every window of the clips
    it did not see, and those window scores (float16) are the soft targets. A finished
    fold without them is reopened from its best checkpoint to score them, untrained.
    """
    from model.metrics import evaluate

    k = config.cross_fit
    fold_config = TrainConfig(
        **{
            **config.to_json(),
            "cross_fit": 0,
            "teachers": [],
            "hidden_units": config.fold_hidden_units or config.hidden_units,
            "fold_hidden_units": None,
            "teacher_window": 0,
        }
    )
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
            fitted = _fit(
                fold_config,
                x,
                y,
                train_idx[fold_of != fold],
                val_idx,
                None,
                where / CHECKPOINT_DIR,
                fingerprint,
                manifest,
                on_progress,
                stage=f"fold {fold + 1}/{k}",
            )
        if fitted is not None and not done.exists():
            tmp = where / "predictions.tmp.npz"
            np.savez(
                tmp,
                held=fitted.predictor.predict(x[train_idx[held]]),
                validation=fitted.predictor.predict(x[val_idx]),
                best_map=np.float64(fitted.state["best_map"]),
                best_iteration=np.int64(fitted.state["best_iteration"]),
            )
            os.replace(tmp, done)
        if fitted is not None and window and not windows_done.exists():
            tmp = where / f"windows-{window}.tmp.npz"
            np.savez(tmp, held=window_scores(fitted.predictor, x[train_idx[held]], window).astype(np.float16))
            os.replace(tmp, windows_done)
        if window:
            with np.load(windows_done) as saved:
                if saved["held"].shape != (len(held), *soft_windows.shape[1:]):
                    raise TrainingDataError(f"{windows_done} does not match this data; choose a new output directory")
                soft_windows[held] = saved["held"]
        with np.load(done) as saved:
            if saved["held"].shape != (len(held), y.shape[1]):
                raise TrainingDataError(f"{done} does not match this data; choose a new output directory")
            soft[held] = saved["held"]
            validation += saved["validation"] / k
            summary["fold_maps"].append(float(saved["best_map"]))
            summary["fold_best_iterations"].append(int(saved["best_iteration"]))
    y_val = np.asarray(y[val_idx], dtype=bool)
    summary["fold_ensemble_map"] = evaluate(y_val, validation).mean_average_precision
    summary["out_of_fold_map"] = evaluate(np.asarray(y[train_idx], dtype=bool), soft).mean_average_precision
    return (soft_windows if window else soft), summary


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
        raise TrainingDataError(f"y has {y.shape[1]} classes but the label list has {len(labels)}")
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
        soft, cross_fit = cross_fit_targets(
            config, x, y, train_idx, val_idx, fingerprint, manifest, output / FOLDS_DIR, on_progress
        )
    fitted = _fit(config, x, y, train_idx, val_idx, soft, output / CHECKPOINT_DIR, fingerprint, manifest, on_progress)
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
