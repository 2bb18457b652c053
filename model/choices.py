"""The names a user chooses among (architectures, precisions, combine rules), importable without TensorFlow.

Settings, the CLI's choices and the model code all read these: one list each.
"""

from __future__ import annotations

from typing import Literal, get_args

Architecture = Literal[
    "decision_level_max_pooling",
    "decision_level_average_pooling",
    "decision_level_single_attention",
    "decision_level_multi_attention",
    "feature_level_attention",
    "frame_self_attention",
]
ARCHITECTURES: tuple[str, ...] = get_args(Architecture)
DEFAULT_ARCHITECTURE = "decision_level_multi_attention"

Precision = Literal["float32", "bfloat16", "int8", "auto"]
PRECISIONS: tuple[str, ...] = get_args(Precision)
TrainPrecision = Literal["float32", "bfloat16"]
TRAIN_PRECISIONS: tuple[str, ...] = get_args(TrainPrecision)

Combine = Literal["mean", "logit-mean"]
COMBINES: tuple[str, ...] = get_args(Combine)
