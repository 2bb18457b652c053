"""Every training setting with its limits and help: the one list the CLI, YAML runs and library callers share."""

from __future__ import annotations

import difflib
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from model.artifact import label_problem
from model.choices import DEFAULT_ARCHITECTURE, Architecture, TrainPrecision

LrSchedule = Literal["constant", "cosine"]
LR_SCHEDULES: tuple[str, ...] = get_args(LrSchedule)
FrameMixTargets = Literal["share", "union"]
Loss = Literal["binary_crossentropy", "asymmetric"]
# Settings of the --cross-fit fold models only (None: as the model's own).
FOLD_SETTINGS = ("fold_hidden_units", "fold_architecture", "fold_iterations")


class TrainingDataError(ValueError):
    """Training data is unusable: wrong shapes, no labels, class count mismatch."""


class TrainConfigError(ValueError):
    """A training setting is out of range (checked when the config is made, before any data loads)."""


def setting(default: Any, help: str = "", *, flag: str | None = None, hidden: bool = False, **limits: Any) -> Any:
    """A training setting: its default, its limits (pydantic's ``ge``/``gt``/``le``/``lt``) and what ``audioset
    train`` says about it. ``flag`` names its option (default ``--field-name``), ``hidden`` gives it none, and
    ``values`` maps each choice of the option onto the field's value. The CLI and the queued run's spec are both
    made from these fields, so a new setting is one edit."""
    values = limits.pop("values", None)
    extra = {k: v for k, v in {"flag": flag, "hidden": hidden, "values": values}.items() if v}
    if isinstance(default, list):
        return Field(default_factory=list, description=help, json_schema_extra=extra or None, **limits)
    return Field(default, description=help, json_schema_extra=extra or None, **limits)


def bounds(info: Any) -> dict[str, Any]:
    """A field's limits by pydantic's names: ``{"ge": 0, "lt": 1}``."""
    names = {"ge", "gt", "le", "lt"}
    return {n: getattr(m, n) for m in info.metadata if (n := type(m).__name__.lower()) in names}


def _range(info: Any) -> str:
    """A field's limits as ``>= 1``, ``in [0, 1)`` and the like."""
    limits = bounds(info)
    low = ("[", limits["ge"]) if "ge" in limits else ("(", limits["gt"]) if "gt" in limits else None
    high = ("]", limits["le"]) if "le" in limits else (")", limits["lt"]) if "lt" in limits else None
    if low and high:
        return f"in {low[0]}{low[1]}, {high[1]}{high[0]}"
    if low:
        return f"{'>=' if low[0] == '[' else '>'} {low[1]}"
    return f"{'<=' if high and high[0] == ']' else '<'} {high[1] if high else ''}"


_KINDS = {"int": "a whole number", "float": "a number", "string": "text", "bool": "true or false", "list": "a list"}


def _literal_values(kind: Any) -> tuple[Any, ...]:
    if get_origin(kind) is Literal:
        return get_args(kind)
    return next((v for arg in get_args(kind) if (v := _literal_values(arg))), ())


def describe(error: ValidationError, model: type[BaseModel]) -> str:
    """A validation error as one line per problem, as clear as a hand-written check: ``batch_size must be
    >= 1, got 0``; ``architecture must be one of …, got 'x'``; ``iterations must be a whole number, got 1e+14``."""
    lines, unknown = [], []
    for problem in error.errors():
        name = ".".join(str(part) for part in problem["loc"])
        kind, got = problem["type"], problem.get("input")
        field = model.model_fields.get(str(problem["loc"][0])) if problem["loc"] else None
        if not name:  # a check across settings: its message says it all
            lines.append(str(problem["msg"]).removeprefix("Value error, "))
        elif kind == "extra_forbidden":
            unknown.append(name)
        elif kind == "literal_error" and field is not None:
            lines.append(f"{name} must be one of {', '.join(map(str, _literal_values(field.annotation)))}, got {got!r}")
        elif kind in {"greater_than", "greater_than_equal", "less_than", "less_than_equal"} and field is not None:
            lines.append(f"{name} must be {_range(field)}, got {got}")
        elif kind.split("_")[0] in _KINDS:
            lines.append(f"{name} must be {_KINDS[kind.split('_')[0]]}, got {got!r}")
        else:
            lines.append(f"{name}: {problem['msg']}")
    if unknown:
        close = [m for u in unknown for m in difflib.get_close_matches(u, list(model.model_fields), n=1)]
        lines.insert(0, f"unknown keys {sorted(unknown)}" + (f"; did you mean {', '.join(close)}?" if close else ""))
    return "; ".join(lines)


class TrainConfig(BaseModel):
    """Every training setting, checked when made (before any data loads) against the same limits everywhere."""

    model_config = ConfigDict(extra="forbid", strict=True)

    architecture: Architecture = setting(DEFAULT_ARCHITECTURE, "Network.")
    batch_size: int = setting(500, "Clips per mini-batch.", ge=1, le=65_536)
    learning_rate: float = setting(1e-3, "Adam learning rate.", gt=0)
    weight_decay: float = setting(
        0.0, "Decoupled weight decay (AdamW): each step shrinks every weight by learning-rate x this; 0 = off.", ge=0
    )
    iterations: int = setting(4000, "Mini-batches to train for.", ge=1, le=10_000_000)
    dropout: float = setting(0.5, "Dropout after each dense block.", ge=0, lt=1)
    hidden_units: int = setting(1024, "Width of each branch.", ge=1, le=16_384)
    branches: int = setting(
        1,
        "Independent copies trained side by side and served as their mean (an ensemble in one model).",
        ge=1,
        le=32,
    )
    ema_decay: float = setting(
        0.0,
        "Evaluate and keep an exponential moving average of the weights (e.g. 0.999); 0 = off.",
        ge=0,
        lt=1,
    )
    teachers: list[str] = setting(
        [],
        "Distil from this model artifact (repeat for an ensemble): their mean prediction is a soft target.",
        flag="--teacher",
    )
    teacher_window: int = setting(
        0,
        "With --teacher or --cross-fit: the teachers (or the fold models, on the clips they did not see) score "
        "windows of this many frames and the model trains on such windows against those scores (pseudo strong "
        "labels); 0 = whole clips.",
        ge=0,
    )
    distill_weight: float = setting(
        0.5, "Weight of the soft targets (--teacher or --cross-fit) against the labels.", ge=0, le=1
    )
    cross_fit: int = setting(
        0,
        "Train K fold models first; each clip's out-of-fold prediction becomes its soft target. 0 = off.",
        ge=0,
        le=20,
    )
    fold_hidden_units: int | None = setting(
        None,
        "Width of the --cross-fit fold models (default: --hidden-units): a wide model can learn from narrower folds.",
        ge=1,
        le=16_384,
    )
    fold_architecture: Architecture | None = setting(
        None,
        "Network of the --cross-fit fold models (default: --architecture): soft targets from another kind of model.",
    )
    fold_iterations: int | None = setting(
        None,
        "Mini-batches for each --cross-fit fold model (default: --iterations), so one command trains short folds and "
        "a long model.",
        ge=1,
        le=10_000_000,
    )
    mask_negatives: float = setting(
        0.0,
        "With --cross-fit or --teacher: per class, leave out of the loss the unlabelled clips the fold models (or "
        "teachers) score highest, up to this many per labelled clip (e.g. 0.5): likely missing labels "
        "(Fonseca et al. 2020); 0 = off.",
        ge=0,
    )
    mixup: float = setting(0.0, "Mixup on embeddings with Beta(ALPHA, ALPHA) weights (e.g. 0.3); 0 = off.", ge=0)
    frame_mix: float = setting(
        0.0,
        "Splice clips: up to this share of each clip's frames come from another clip in the batch; 0 = off.",
        ge=0,
        le=1,
    )
    frame_mix_targets: FrameMixTargets = setting(
        "share",
        "Targets of a spliced clip: blended by frame share, or the union of both label sets.",
    )
    label_smoothing: float = setting(
        0.0, "Pull the 0/1 targets towards 0.5 by this amount (e.g. 0.1); 0 = off.", ge=0, lt=1
    )
    loss: Loss = setting(
        "binary_crossentropy",
        "asymmetric: weaken the push on negatives (Ridnik et al. 2021), for labels that miss present sounds.",
    )
    negative_gamma: float = setting(4.0, "--loss asymmetric: focusing power on the negatives (0 = none).", ge=0)
    negative_clip: float = setting(0.05, "--loss asymmetric: a negative scored below this costs nothing.", ge=0, lt=1)
    lr_schedule: LrSchedule = setting(
        "constant", "cosine: decay the learning rate to 1% of --learning-rate over --iterations."
    )
    balanced: bool = setting(
        True,
        "balanced: classes drawn round-robin into each mini-batch (Kong et al.); shuffle: plain shuffling.",
        flag="--sampling",
        values={"balanced": True, "shuffle": False},
    )
    precision: TrainPrecision = setting(
        "float32",
        "Training arithmetic. bfloat16: mixed precision (float32 weights), about 1.5x faster on CPUs with "
        "avx512_bf16/AMX; validation and the artifact stay float32.",
    )
    patience: int = setting(
        0,
        "Stop after this many evaluations in a row without a better validation mAP; 0 = run all iterations.",
        ge=0,
    )
    validation_fraction: float = setting(
        0.1,
        "Share of the clips held out for validation (unless --validation gives a file).",
        gt=0,
        lt=1,
    )
    eval_every: int = setting(250, "Iterations between evaluations (and checkpoints).", ge=1)
    checkpoint_every: int = setting(250, hidden=True)  # follows --eval-every on the command line
    seed: int = setting(0, "Seed of the weights and of the batches.")
    split_seed: int | None = setting(
        None, "Seed of the validation hold-out (default: --seed). Keep it fixed to compare runs or distil between them."
    )
    compile_forms: bool = setting(
        True,
        "compile: also write the serving forms (int8, bfloat16) with their accuracy gate on the held-out clips, so "
        "scoring loads without TensorFlow; skip: a quicker experiment, served by Keras until `audioset compile`.",
        flag="--forms",
        values={"compile": True, "skip": False},
    )
    name: str = setting("audioset-model", "Model name, written into every result's model field.")
    version: str = setting("1", "Model version (results say name@version).")

    @model_validator(mode="after")
    def _settings_fit_together(self) -> TrainConfig:
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
        return self

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise TrainConfigError(describe(exc, TrainConfig)) from None

    def to_json(self) -> dict[str, Any]:
        return self.model_dump()

    def but(self, **changes: Any) -> TrainConfig:
        """A copy with ``changes``, checked like any new config (``model_copy`` would not check them)."""
        return TrainConfig(**{**self.to_json(), **changes})

    @property
    def validation_split(self) -> tuple[float, int]:
        """(fraction, seed) of the hold-out: runs that share it are comparable and can teach each other."""
        return self.validation_fraction, self.seed if self.split_seed is None else self.split_seed


# Settings a resumed run may change: extend a run, stop it now (iterations <= reached), add early stopping, or
# compile the forms of the artifact it publishes (which the weights do not depend on).
RESUMABLE = frozenset({"iterations", "patience", "compile_forms"})
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
