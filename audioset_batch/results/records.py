"""Summary and error records as stored beside the results: their fields, times and JSON encoding."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson


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
