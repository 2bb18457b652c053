"""Clip-level evaluation metrics as reported for AudioSet: mAP, mean AUC, d-prime."""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score


@dataclass(frozen=True, slots=True)
class ClassMetrics:
    index: int
    positives: int
    average_precision: float | None  # None when the class has no positives
    auc: float | None  # None when the class has no positives or no negatives


@dataclass(frozen=True, slots=True)
class Evaluation:
    mean_average_precision: float
    mean_auc: float
    d_prime: float
    clips: int
    classes_evaluated: int
    per_class: list[ClassMetrics]

    def summary(self) -> dict[str, float | int]:
        return {
            "mAP": self.mean_average_precision,
            "mean_auc": self.mean_auc,
            "d_prime": self.d_prime,
            "clips": self.clips,
            "classes_evaluated": self.classes_evaluated,
        }


def d_prime(auc: float) -> float:
    """Sensitivity index from AUC: ``sqrt(2) * Phi^-1(auc)``."""
    if not 0.0 < auc < 1.0:
        return math.inf if auc >= 1.0 else -math.inf
    return math.sqrt(2.0) * NormalDist().inv_cdf(auc)


def evaluate(labels: np.ndarray, scores: np.ndarray) -> Evaluation:
    """Per-class AP and AUC, averaged over the classes where each is defined.

    AP counts classes with at least one positive; AUC needs both a positive and
    a negative. Classes that fail either rule are left out of that mean.
    """
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    if labels.shape != scores.shape or labels.ndim != 2:
        raise ValueError(f"labels {labels.shape} and scores {scores.shape} must be the same (clips, classes) shape")
    clips = labels.shape[0]
    per_class: list[ClassMetrics] = []
    aps: list[float] = []
    aucs: list[float] = []
    for c in range(labels.shape[1]):
        truth = labels[:, c]
        positives = int(truth.sum())
        ap = auc = None
        if positives > 0:
            ap = float(average_precision_score(truth, scores[:, c]))
            aps.append(ap)
            if positives < clips:
                auc = float(roc_auc_score(truth, scores[:, c]))
                aucs.append(auc)
        per_class.append(ClassMetrics(index=c, positives=positives, average_precision=ap, auc=auc))
    if not aps:
        raise ValueError("no class has a positive clip; mAP is undefined")
    mean_auc = float(np.mean(aucs)) if aucs else float("nan")
    return Evaluation(
        mean_average_precision=float(np.mean(aps)),
        mean_auc=mean_auc,
        d_prime=d_prime(mean_auc) if aucs else float("nan"),
        clips=clips,
        classes_evaluated=len(aps),
        per_class=per_class,
    )
