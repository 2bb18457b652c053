"""What float embeddings must look like: finite, in range, and not 8-bit codes cast to float."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from audioset_batch.errors import LayoutError, NonFiniteError


def _first_bad_clip(ok: np.ndarray) -> int | None:
    """Index of the first clip with any value where ``ok`` (clips x frames x width) is False, or None."""
    clip_ok = ok.reshape(len(ok), -1).all(axis=1)
    return None if clip_ok.all() else int(np.flatnonzero(~clip_ok)[0])


def _first_code_clip(x: np.ndarray) -> int | None:
    """Index of the first float clip made only of whole numbers in 0..255 (above 2 somewhere), or None.

    Float embeddings are continuous, about [-2, 2]; uint8 codes cast to float are a conversion slip that would
    otherwise be scored without dequantising, and every score would be wrong without a word.
    """
    flat = x.reshape(len(x), -1)
    codes = ((flat == np.floor(flat)) & (flat >= 0) & (flat <= 255)).all(axis=1) & (flat.max(axis=1, initial=0) > 2)
    return int(np.flatnonzero(codes)[0]) if codes.any() else None


def check_values(x: np.ndarray, max_abs: float, first_clip: int, frames: str = "") -> None:
    """Refuse a block of clips (clips x frames x width) whose float values cannot be embeddings; the error names
    the first bad clip (``first_clip`` + its row) and ``frames``, a note on which frames were read."""
    if x.dtype == np.uint8:
        return
    if (bad := _first_bad_clip(np.isfinite(x))) is not None:
        raise NonFiniteError(f"dataset 'x' has NaN or infinite values (first at clip {first_clip + bad}{frames})")
    if (bad := _first_bad_clip(np.abs(x) <= max_abs)) is not None:
        raise NonFiniteError(
            f"dataset 'x' has values beyond ±{max_abs:g} (first at clip {first_clip + bad}{frames}); "
            "float embeddings are expected in about [-2, 2]"
        )
    if (bad := _first_code_clip(x)) is not None:
        raise LayoutError(
            f"dataset 'x' is float but holds 8-bit codes (whole numbers 0-255, first at clip {first_clip + bad}"
            f"{frames}): store x as uint8, as the AudioSet release does, or dequantise it as (x - 128) / 128"
        )


def declared_seconds_per_frame(*attribute_sets: Mapping[str, Any]) -> float | None:
    """A file's own ``seconds_per_frame`` (the first of ``x``'s attributes, then the file's), or None."""
    for attrs in attribute_sets:
        if "seconds_per_frame" in attrs:
            try:
                value = float(np.asarray(attrs["seconds_per_frame"]).reshape(-1)[0])
            except (TypeError, ValueError, IndexError):
                value = math.nan
            if not 0 < value <= 3600:
                raise LayoutError("attribute 'seconds_per_frame' must be a number of seconds in (0, 3600]")
            return value
    return None
