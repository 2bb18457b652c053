"""The results layout contract: where each result object goes and what summary/error records hold."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from audioset_batch.object_store import check_bucket, check_key

JSONL_SUFFIX = ".jsonl"
SUMMARY_SUFFIX = ".summary.json"
ERROR_SUFFIX = ".error.json"
HDF5_SUFFIXES = (".h5", ".hdf5")


@dataclass(frozen=True, slots=True)
class ResultKeys:
    jsonl: str
    summary: str
    error: str


def result_keys(bucket: str, input_key: str, prefix: str) -> ResultKeys:
    """``<prefix><bucket>/<key>.jsonl`` and friends. Keys that could escape the prefix are refused.

    The source bucket is part of the key, so two buckets holding the same key never share (and
    never replace) each other's results.
    """
    check_bucket(bucket)
    check_key(input_key)
    base = f"{prefix}{bucket}/{input_key}"
    return ResultKeys(jsonl=base + JSONL_SUFFIX, summary=base + SUMMARY_SUFFIX, error=base + ERROR_SUFFIX)


def is_hdf5_key(key: str) -> bool:
    return key.lower().endswith(HDF5_SUFFIXES)


def is_result_key(bucket: str, key: str, results_bucket: str, results_prefix: str) -> bool:
    """True for objects this service wrote: producers must never feed results back in."""
    return bucket == results_bucket and bool(results_prefix) and key.startswith(results_prefix)


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def error_record(
    *, source: str, error: BaseException, attempts: int, etag: str | None, model: str, job: str | None
) -> dict[str, Any]:
    return {
        "source": source,
        "error": type(error).__name__,
        "message": str(error),
        "attempts": attempts,
        "etag": etag,
        "model": model,
        "job": job,
        "created": now(),
    }


def dumps(record: dict[str, Any]) -> bytes:
    return orjson.dumps(record, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY) + b"\n"


def loads(data: bytes | None) -> dict[str, Any] | None:
    if data is None:
        return None
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None
