"""Windows of a clip's frames, for training and serving alike: where a clip's sound is, a short window shown to a
net as a whole clip (training), and the model-length windows a longer recording is cut into (serving)."""

from __future__ import annotations

from typing import Any

import numpy as np


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


def last_window_starts(lengths: np.ndarray, width: int, frames: int) -> np.ndarray:
    """Each clip's last window start within its heard frames (0 for a clip shorter than ``width``)."""
    return np.asarray(np.clip(np.minimum(lengths, frames) - width, 0, frames - width))


def window_starts(lengths: np.ndarray, width: int, frames: int, rng: np.random.Generator) -> np.ndarray:
    """A random window start per clip, within the clip's heard frames where it has ``width`` of them."""
    last = last_window_starts(lengths, width, frames)
    starts: np.ndarray = (rng.random(len(lengths)) * (last + 1)).astype(np.int64)
    return starts


def window_scores(predictor: Any, x: np.ndarray, window: int) -> np.ndarray:
    """What ``predictor`` hears in each ``window``-frame window of each clip: (clips, windows, classes)."""
    starts = hop_starts(x.shape[1], window, 1).tolist()
    return np.stack([predictor.predict(tile_windows(x, np.full(len(x), start), window)) for start in starts], axis=1)


def hop_starts(frames: int, width: int, hop: int) -> np.ndarray:
    """Start frames of the windows of a ``frames``-long clip every ``hop`` frames, in order, plus a last window
    flush with the end when the hops do not reach it (serving recordings; with ``hop`` 1, every window)."""
    if frames <= width:
        return np.zeros(1, dtype=np.int64)
    starts = np.arange(0, frames - width + 1, hop, dtype=np.int64)
    if starts[-1] + width < frames:
        starts = np.append(starts, frames - width)
    return starts


def cut_windows(frames: np.ndarray, first: int, starts: np.ndarray, width: int) -> np.ndarray:
    """The windows at ``starts`` from ``frames`` (a slice of a clip beginning at frame ``first``), padded with
    zeros past the clip's end: (windows, width, 128)."""
    needed = int(starts[-1]) - first + width
    if len(frames) < needed:
        pad = np.zeros((needed - len(frames), *frames.shape[1:]), dtype=frames.dtype)
        frames = np.concatenate([frames, pad])
    view = np.lib.stride_tricks.sliding_window_view(frames, width, axis=0)  # (n, 128, width)
    return np.ascontiguousarray(view[starts - first].transpose(0, 2, 1))
