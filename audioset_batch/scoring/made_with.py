"""What a result was made with, beside its model and its object's ETag.

A summary records it, and the already-scored check compares it: a file whose summary says it was made otherwise
(another top-k, hop, threshold or labels mode, other thresholds, a recording's event edges placed otherwise) is
scored again when enqueued again.
"""

from __future__ import annotations

from typing import Any

from audioset_batch.scoring.clip_records import OutputOptions
from model.thresholds import digest

#: Fields that summaries written before they existed lack: those files were made as these say.
_BEFORE = {"labels": "top"}
#: Fields that only matter for recordings, which were refused before these existed: a summary without them stands.
_RECORDINGS_ONLY = ("window_hop", "event_threshold", "thresholds")


def thresholds_used(options: OutputOptions) -> str | None:
    """The digest of the per-class thresholds the records or events used, if they used any."""
    used = options.labels == "threshold" or options.event_threshold is None
    return digest(list(options.thresholds)) if used and options.thresholds else None


def made_with(options: OutputOptions) -> dict[str, Any]:
    return {
        "top_k": options.top_k,
        "full_scores": options.full_scores,
        "window_hop": options.window_hop,
        "event_threshold": options.event_threshold,
        "labels": options.labels,
        "thresholds": thresholds_used(options),
    }


def model_identity(tag: str) -> str:
    """``name@version`` of a result's model tag, without the ``+int8``/``+bfloat16`` that says how it computed.

    A fleet of mixed CPUs may serve one model in different precisions (``auto`` picks per host); a file scored
    by either is scored by the same model, so it is not scored again for that.
    """
    return tag.split("+", 1)[0]


def still_stands(
    summary: dict[str, Any] | None, etag: str, model: str, options: OutputOptions, event_edges: str = "windows"
) -> bool:
    """The summary is of this version of the object, by this model (in any precision), made as ``options``
    would make it; a recording's events with their edges placed the same way (``frames`` or ``windows``)."""
    if not summary or summary.get("etag") != etag:
        return False
    if model_identity(str(summary.get("model", ""))) != model_identity(model):
        return False
    for name, wanted in made_with(options).items():
        default = wanted if name in _RECORDINGS_ONLY else _BEFORE.get(name)
        if summary.get(name, default) != wanted:
            return False
    return "windows" not in summary or summary.get("event_edges", "windows") == event_edges
