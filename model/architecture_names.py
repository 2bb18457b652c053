"""The architectures' names, importable without TensorFlow: settings are checked against them before it loads."""

from __future__ import annotations

ARCHITECTURES = (
    "decision_level_max_pooling",
    "decision_level_average_pooling",
    "decision_level_single_attention",
    "decision_level_multi_attention",
    "feature_level_attention",
    "frame_self_attention",
)
DEFAULT_ARCHITECTURE = "decision_level_multi_attention"
