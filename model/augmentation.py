"""Batch augmentation on embeddings: label smoothing, mixup and frame splicing (pure numpy)."""

from __future__ import annotations

import numpy as np


def smooth_labels(targets: np.ndarray, amount: float) -> np.ndarray:
    """Pull binary targets towards 0.5 by ``amount``: 1 becomes ``1 - amount/2``, 0 becomes ``amount/2``."""
    return targets * (1.0 - amount) + 0.5 * amount


def mix_batch(
    x: np.ndarray, targets: np.ndarray, alpha: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Mixup on embeddings: each clip is blended with a random partner from the batch.

    The weight ``lam ~ Beta(alpha, alpha)`` is folded to ``max(lam, 1 - lam)`` so each
    mixed clip stays closest to its own original; targets are blended the same way.
    """
    lam = rng.beta(alpha, alpha, size=len(x)).astype(np.float32)
    lam = np.maximum(lam, 1.0 - lam)
    partner = rng.permutation(len(x))
    mixed_x = lam[:, None, None] * x + (1.0 - lam[:, None, None]) * x[partner]
    mixed_y = lam[:, None] * targets + (1.0 - lam[:, None]) * targets[partner]
    return mixed_x.astype(np.float32), mixed_y.astype(np.float32)


def frame_mix_batch(
    x: np.ndarray, targets: np.ndarray, max_share: float, rng: np.random.Generator, union: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Splice clips: up to ``max_share`` of each clip's frames come from a random partner in the batch.

    VGGish embeds each second of audio on its own, so a clip whose frames are partly
    another clip's is exactly the embedding of the spliced audio: a realistic new
    training clip, unlike a blend of embeddings. Each clip takes ``k`` frames, ``k``
    uniform in ``0..round(max_share * frames)``, at random positions. Targets are
    blended by the share of frames each clip gave (``union=False``), or are the union
    of both label sets (``union=True``: a sound heard in any second is present).
    """
    n, frames = x.shape[:2]
    most = round(max_share * frames)
    k = rng.integers(0, most + 1, size=n)
    partner = rng.permutation(n)
    ranks = rng.random((n, frames)).argsort(axis=1).argsort(axis=1)
    from_partner = ranks < k[:, None]
    mixed_x = np.where(from_partner[:, :, None], x[partner], x).astype(np.float32)
    if union:
        given = (k > 0)[:, None]
        mixed_y = np.where(given, np.maximum(targets, targets[partner]), targets)
    else:
        share = (k / frames).astype(np.float32)[:, None]
        mixed_y = (1.0 - share) * targets + share * targets[partner]
    return mixed_x, mixed_y.astype(np.float32)
