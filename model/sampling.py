"""Which clips each mini-batch holds: the validation split, balanced batches (Kong et al. 2018) or shuffled epochs."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

from model.train_config import TrainConfig, TrainingDataError


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


def sampler_for(config: TrainConfig, y: np.ndarray, seed: int) -> Iterator[np.ndarray]:
    if config.balanced:
        return BalancedSampler(y, config.batch_size, seed)
    return ShuffleSampler(len(y), config.batch_size, seed)
