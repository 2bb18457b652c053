"""The results layout contract: where each result object of an input goes."""

from __future__ import annotations

from dataclasses import dataclass

from audioset_batch.errors import AudiosetError
from audioset_batch.storage.object_store import ObjectURL, check_bucket, check_key

JSONL_SUFFIX = ".jsonl"
SUMMARY_SUFFIX = ".summary.json"
ERROR_SUFFIX = ".error.json"
EVENTS_SUFFIX = ".events.jsonl"  # also ends in .jsonl: readers of clip records skip it by this suffix


@dataclass(frozen=True, slots=True)
class ResultKeys:
    jsonl: str
    summary: str
    error: str
    events: str


def result_keys(bucket: str, input_key: str, prefix: str) -> ResultKeys:
    """``<prefix><bucket>/<key>.jsonl`` and friends. Keys that could escape the prefix are refused.

    The source bucket is part of the key, so two buckets holding the same key never share (and
    never replace) each other's results.
    """
    check_bucket(bucket)
    check_key(input_key)
    base = f"{prefix}{bucket}/{input_key}"
    return ResultKeys(
        jsonl=base + JSONL_SUFFIX, summary=base + SUMMARY_SUFFIX, error=base + ERROR_SUFFIX, events=base + EVENTS_SUFFIX
    )


def item_result_keys(url: str, prefix: str) -> ResultKeys | None:
    """The result keys of a job item's object URL, or None for an item that never named a valid object (a
    refused message): it has no results anywhere."""
    try:
        parsed = ObjectURL.parse(url)
        return result_keys(parsed.bucket, parsed.key, prefix)
    except AudiosetError:
        return None
