"""The learning rate over a run: a function of the iteration alone, so a resumed run continues on its curve."""

from __future__ import annotations

from model.native_logs import import_tensorflow
from model.train_config import LR_SCHEDULES

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
