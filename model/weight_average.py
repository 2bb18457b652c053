"""An exponential moving average of a model's weights, saved beside its checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from model.atomic_files import save_npz


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
