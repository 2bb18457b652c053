"""Every training setting with its limits and help: the one list the CLI, YAML runs and library callers share."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from model.artifact import label_problem
from model.choices import ARCHITECTURES, DEFAULT_ARCHITECTURE, TRAIN_PRECISIONS

LR_SCHEDULES = ("constant", "cosine")
FRAME_MIX_TARGETS = ("share", "union")
LOSSES = ("binary_crossentropy", "asymmetric")
# Settings of the --cross-fit fold models only (None: as the model's own).
FOLD_SETTINGS = ("fold_hidden_units", "fold_architecture", "fold_iterations")


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


def _wrong_type(value: Any, annotation: str) -> str:
    """What ``value`` must be for a field annotated ``annotation``, or "" when it is: a queued run's YAML can say
    ``iterations: 1e14`` (a float) or ``batch_size: "many"``, which no click option would let through."""
    if value is None and "None" in annotation:
        return ""
    if annotation.startswith("int") and (isinstance(value, bool) or not isinstance(value, int)):
        return f"a whole number, got {value!r}"
    if annotation.startswith("float") and (isinstance(value, bool) or not isinstance(value, int | float)):
        return f"a number, got {value!r}"
    if annotation.startswith("str") and not isinstance(value, str):
        return f"text, got {value!r}"
    return ""


def _out_of_range(value: Any, meta: Mapping[str, Any]) -> str:
    """What ``value`` must be under a field's ``choices``/``min``/``max`` metadata, or "" when it is."""
    if "choices" in meta and value is not None and value not in meta["choices"]:
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
    architecture: str = option(DEFAULT_ARCHITECTURE, "Network.", choices=ARCHITECTURES)
    batch_size: int = option(500, "Clips per mini-batch.", min=1, max=65_536)
    learning_rate: float = option(1e-3, "Adam learning rate.", min=0, min_open=True)
    weight_decay: float = option(
        0.0, "Decoupled weight decay (AdamW): each step shrinks every weight by learning-rate x this; 0 = off.", min=0
    )
    iterations: int = option(4000, "Mini-batches to train for.", min=1, max=10_000_000)
    dropout: float = option(0.5, "Dropout after each dense block.", min=0, max=1, max_open=True)
    hidden_units: int = option(1024, "Width of each branch.", min=1, max=16_384)
    branches: int = option(
        1,
        "Independent copies trained side by side and served as their mean (an ensemble in one model).",
        min=1,
        max=32,
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
        0,
        "Train K fold models first; each clip's out-of-fold prediction becomes its soft target. 0 = off.",
        min=0,
        max=20,
    )
    fold_hidden_units: int | None = option(
        None,
        "Width of the --cross-fit fold models (default: --hidden-units): a wide model can learn from narrower folds.",
        min=1,
        max=16_384,
    )
    fold_architecture: str | None = option(
        None,
        "Network of the --cross-fit fold models (default: --architecture): soft targets from another kind of model.",
        choices=ARCHITECTURES,
    )
    fold_iterations: int | None = option(
        None,
        "Mini-batches for each --cross-fit fold model (default: --iterations), so one command trains short folds and "
        "a long model.",
        min=1,
        max=10_000_000,
    )
    mask_negatives: float = option(
        0.0,
        "With --cross-fit or --teacher: per class, leave out of the loss the unlabelled clips the fold models (or "
        "teachers) score highest, up to this many per labelled clip (e.g. 0.5): likely missing labels "
        "(Fonseca et al. 2020); 0 = off.",
        min=0,
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
            problem = _wrong_type(getattr(self, spec.name), str(spec.type)) or _out_of_range(
                getattr(self, spec.name), spec.metadata
            )
            if problem:
                raise TrainConfigError(f"{spec.name} must be {problem}")
        if bad_label := label_problem(str(self.name), str(self.version)):
            raise TrainConfigError(bad_label)
        if self.cross_fit == 1:
            raise TrainConfigError(f"cross_fit must be 0 (off) or a number of folds >= 2, got {self.cross_fit}")
        if self.teacher_window and not (self.teachers or self.cross_fit):
            raise TrainConfigError(
                "teacher_window needs --teacher or --cross-fit (the models that score each window), "
                f"got {self.teacher_window}"
            )
        if self.mask_negatives and not (self.teachers or self.cross_fit):
            raise TrainConfigError(
                "mask_negatives needs --teacher or --cross-fit (the models that find the likely missing labels), "
                f"got {self.mask_negatives}"
            )
        unused = [name for name in FOLD_SETTINGS if getattr(self, name) is not None and not self.cross_fit]
        if unused:
            verb = "needs" if len(unused) == 1 else "need"
            raise TrainConfigError(f"{', '.join(unused)} {verb} --cross-fit (fold models exist only with it)")
        if self.cross_fit and self.teachers:
            raise TrainConfigError("cross_fit and teachers both set the soft targets; choose one")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def validation_split(self) -> tuple[float, int]:
        """(fraction, seed) of the hold-out: runs that share it are comparable and can teach each other."""
        return self.validation_fraction, self.seed if self.split_seed is None else self.split_seed


# Settings a resumed run may change: extend a run, stop it now (iterations <= reached), or add early stopping.
RESUMABLE = frozenset({"iterations", "patience"})
# Settings that only shape soft targets: a run without them (a cross-fit fold) does not depend on them.
SOFT_TARGET_SETTINGS = frozenset({"distill_weight", "mask_negatives"})
# What a cross-fit fold model does not depend on: its folds can be reused by a run of another name or version.
FOLD_INDEPENDENT = SOFT_TARGET_SETTINGS | {"name", "version"}


def resume_conflicts(
    saved_config: dict[str, Any], config: TrainConfig, ignored: frozenset[str] = frozenset()
) -> list[str]:
    """The settings a resumed run may not change, each as ``name: saved -> wanted``."""
    saved = {**TrainConfig().to_json(), **saved_config}  # a run saved before a setting existed ran with its default
    wanted = config.to_json()
    return [
        f"{name.replace('_', '-')}: {saved.get(name)!r} -> {wanted.get(name)!r}"
        for name in sorted(set(saved) | set(wanted))
        if name not in RESUMABLE | ignored and saved.get(name) != wanted.get(name)
    ]


def validation_split_of(hyperparameters: dict[str, Any]) -> tuple[float, int]:
    """The hold-out a trained model's manifest records (older manifests split by ``seed``)."""
    split_seed = hyperparameters.get("split_seed")
    seed = hyperparameters.get("seed", 0) if split_seed is None else split_seed
    return float(hyperparameters.get("validation_fraction", 0.1)), int(seed)
