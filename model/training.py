"""Training: balanced mini-batches (Kong et al. 2018), validation, checkpoints, resume."""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from model.labels import ClassLabel

CHECKPOINT_DIR = "checkpoint"
STATE_NAME = "state.json"


class TrainingDataError(ValueError):
    """Training data is unusable: wrong shapes, no labels, class count mismatch."""


@dataclass(slots=True)
class TrainConfig:
    architecture: str = "decision_level_multi_attention"
    batch_size: int = 500
    learning_rate: float = 1e-3
    iterations: int = 4000
    dropout: float = 0.5
    hidden_units: int = 1024
    balanced: bool = True
    validation_fraction: float = 0.1
    eval_every: int = 250
    checkpoint_every: int = 250
    seed: int = 0
    name: str = "audioset-model"
    version: str = "1"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class Progress:
    iteration: int
    loss: float
    validation_map: float | None
    best_map: float | None


@dataclass(slots=True)
class TrainResult:
    artifact: Path
    best_iteration: int
    best_map: float
    history: list[dict[str, float]] = field(default_factory=list)


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


def train(
    config: TrainConfig,
    x: np.ndarray,
    y: np.ndarray,
    labels: Sequence[ClassLabel],
    output_dir: str | Path,
    on_progress: Callable[[Progress], None] | None = None,
    data_description: str = "",
) -> TrainResult:
    """Train, evaluate every ``eval_every`` iterations, keep the best by validation mAP.

    State lives in ``output_dir/checkpoint``; calling again with the same
    ``output_dir`` resumes from the last checkpoint instead of starting over.
    The best model is written as an artifact to ``output_dir/model``.
    """
    import keras

    from model import artifact
    from model.architectures import build_model
    from model.inference import Predictor, dequantize
    from model.metrics import evaluate

    if x.ndim != 3 or x.shape[2] != 128:
        raise TrainingDataError(f"x must be (clips, frames, 128), got {x.shape}")
    if y.ndim != 2 or y.shape[0] != x.shape[0]:
        raise TrainingDataError(f"y must be (clips, classes) with {x.shape[0]} clips, got {y.shape}")
    if y.shape[1] != len(labels):
        raise TrainingDataError(f"y has {y.shape[1]} classes but the label list has {len(labels)}")
    output = Path(output_dir)
    checkpoint = output / CHECKPOINT_DIR
    checkpoint.mkdir(parents=True, exist_ok=True)
    fingerprint = data_fingerprint(x, y)
    train_idx, val_idx = stratified_split(y, config.validation_fraction, config.seed)
    x_val, y_val = x[val_idx], np.asarray(y[val_idx], dtype=bool)

    state_path = checkpoint / STATE_NAME
    keras.utils.set_random_seed(config.seed)
    if state_path.exists():
        state = json.loads(state_path.read_text(encoding="utf-8"))
        if state["fingerprint"] != fingerprint or state["config"] != config.to_json():
            raise TrainingDataError(f"{output} holds a run with other data or settings; choose a new output directory")
        import model.attention_pooling  # noqa: F401

        net = keras.models.load_model(checkpoint / "last.keras", safe_mode=True)
    else:
        state = {
            "iteration": 0,
            "best_map": -1.0,
            "best_iteration": 0,
            "history": [],
            "fingerprint": fingerprint,
            "config": config.to_json(),
        }
        net = build_model(
            config.architecture,
            classes=y.shape[1],
            frames=x.shape[1],
            hidden_units=config.hidden_units,
            dropout=config.dropout,
        )
        net.compile(optimizer=keras.optimizers.Adam(config.learning_rate), loss="binary_crossentropy")

    # Re-seed from the iteration so a resumed run draws fresh batches deterministically.
    sampler = _sampler(config, np.asarray(y[train_idx], dtype=bool), config.seed + int(state["iteration"]))
    manifest = artifact.Manifest(
        name=config.name,
        version=config.version,
        architecture=config.architecture,
        classes=list(labels),
        frames=int(x.shape[1]),
        hidden_units=config.hidden_units,
    )
    predictor = Predictor(net, manifest)
    loss_value = float("nan")
    started = time.monotonic()
    while state["iteration"] < config.iterations:
        batch = train_idx[next(sampler)]
        loss_value = float(net.train_on_batch(dequantize(x[batch]), np.asarray(y[batch], dtype=np.float32)))
        state["iteration"] += 1
        iteration = int(state["iteration"])
        val_map: float | None = None
        if iteration % config.eval_every == 0 or iteration == config.iterations:
            val_map = evaluate(y_val, predictor.predict(x_val)).mean_average_precision
            state["history"].append({"iteration": iteration, "loss": loss_value, "validation_map": val_map})
            if val_map > state["best_map"]:
                state["best_map"], state["best_iteration"] = val_map, iteration
                net.save_weights(checkpoint / "best.weights.h5")
        if iteration % config.checkpoint_every == 0 or iteration == config.iterations:
            net.save(checkpoint / "last.keras")
            _write_json(state_path, state)
        if on_progress is not None:
            best = state["best_map"] if state["best_map"] >= 0 else None
            on_progress(Progress(iteration, loss_value, val_map, best))

    net.load_weights(checkpoint / "best.weights.h5")
    final = evaluate(y_val, predictor.predict(x_val))
    manifest.created = datetime.now(UTC).isoformat(timespec="seconds")
    manifest.training = {
        "data": data_description,
        "data_fingerprint": fingerprint,
        "clips": int(x.shape[0]),
        "train_clips": len(train_idx),
        "validation_clips": len(val_idx),
        "best_iteration": int(state["best_iteration"]),
        "hyperparameters": config.to_json(),
        "seconds": round(time.monotonic() - started, 1),
    }
    manifest.metrics = {"validation": final.summary()}
    artifact.save(net, manifest, output / "model")
    return TrainResult(
        output / "model", int(state["best_iteration"]), float(final.mean_average_precision), list(state["history"])
    )
