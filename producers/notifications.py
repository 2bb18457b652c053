"""Parse bucket notifications into object events.

Accepted shapes:
- S3-style ``{"Records": [{"eventName": "s3:ObjectCreated:Put",
  "s3": {"bucket": {"name"}, "object": {"key", "eTag", "size"}}}]}`` (keys URL-encoded, ``+`` for space),
  a bare record, or MinIO's Redis ``access`` format ``[{"Event": [<record>…], "EventTime": "…"}]``;
- IBM Code Engine COS subscription events: ``{"bucket", "key", "operation",
  "notification": {"bucket_name", "object_name", "object_etag", "object_length", "event_type"}}``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from audioset_batch.storage.object_store import HDF5_SUFFIXES, decode_key

MAX_PAYLOAD_BYTES = 1024 * 1024


class MalformedEventError(ValueError):
    """The payload is not JSON, or not a notification shape we know; the message says why."""


@dataclass(frozen=True, slots=True)
class ObjectEvent:
    bucket: str
    key: str
    etag: str | None
    size: int | None
    event_type: str


def _require(mapping: Any, name: str, where: str) -> Any:
    if not isinstance(mapping, dict) or name not in mapping:
        raise MalformedEventError(f"{where}: missing '{name}'")
    return mapping[name]


def _s3_record(record: Any, where: str) -> ObjectEvent:
    event_name = _require(record, "eventName", where)
    s3 = _require(record, "s3", where)
    bucket = _require(_require(s3, "bucket", f"{where}.s3"), "name", f"{where}.s3.bucket")
    obj = _require(s3, "object", f"{where}.s3")
    key = _require(obj, "key", f"{where}.s3.object")
    if not isinstance(bucket, str) or not isinstance(key, str) or not bucket or not key:
        raise MalformedEventError(f"{where}: bucket name and object key must be non-empty strings")
    etag = obj.get("eTag") or obj.get("etag")
    size = obj.get("size")
    return ObjectEvent(
        bucket=bucket,
        key=decode_key(key),
        etag=str(etag).strip('"') if etag else None,
        size=int(size) if isinstance(size, int | float) else None,
        event_type=str(event_name).removeprefix("s3:"),
    )


def _ibm_event(payload: dict[str, Any]) -> ObjectEvent:
    note = payload.get("notification")
    if not isinstance(note, dict):
        note = {}
    bucket = note.get("bucket_name") or payload.get("bucket")
    key = note.get("object_name") or payload.get("key")
    if not isinstance(bucket, str) or not isinstance(key, str) or not bucket or not key:
        raise MalformedEventError("IBM COS event: bucket and key (notification.bucket_name/object_name) are required")
    event_type = note.get("event_type") or payload.get("operation") or ""
    etag = note.get("object_etag")
    size = note.get("object_length")
    try:
        size_value = int(size) if size is not None else None
    except (TypeError, ValueError):
        size_value = None
    return ObjectEvent(
        bucket=bucket, key=key, etag=str(etag).strip('"') if etag else None, size=size_value, event_type=str(event_type)
    )


def parse_events(payload: bytes | str | Any) -> list[ObjectEvent]:
    """All object events in one payload (a payload may carry several records)."""
    if isinstance(payload, bytes | str):
        if len(payload) > MAX_PAYLOAD_BYTES:  # the HTTP endpoint caps bodies; a Redis list has no cap of its own
            raise MalformedEventError(f"payload of {len(payload)} bytes, over the {MAX_PAYLOAD_BYTES}-byte limit")
        try:
            payload = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            raise MalformedEventError(f"not valid JSON: {exc}") from None
    if isinstance(payload, list):
        events: list[ObjectEvent] = []
        for i, item in enumerate(payload):
            if isinstance(item, dict) and "Event" in item:  # MinIO access format
                records = item["Event"]
                if not isinstance(records, list):
                    raise MalformedEventError(f"[{i}].Event must be a list")
                events += [_s3_record(r, f"[{i}].Event[{j}]") for j, r in enumerate(records)]
            elif isinstance(item, dict):
                events += parse_events(item)
            else:  # one level of array only: deep nesting is no notification shape (and would exhaust the stack)
                raise MalformedEventError(f"[{i}] must be an object, got {type(item).__name__}")
        return events
    if not isinstance(payload, dict):
        raise MalformedEventError(f"expected a JSON object or array, got {type(payload).__name__}")
    if "Records" in payload:
        records = payload["Records"]
        if not isinstance(records, list):
            raise MalformedEventError("'Records' must be a list")
        return [_s3_record(r, f"Records[{i}]") for i, r in enumerate(records)]
    if "Event" in payload:
        return parse_events([payload])
    if "eventName" in payload:
        return [_s3_record(payload, "record")]
    if "notification" in payload or ("bucket" in payload and "key" in payload):
        return [_ibm_event(payload)]
    raise MalformedEventError(f"unknown notification shape (top-level keys: {sorted(payload)[:8]})")


CREATED_TYPES = ("ObjectCreated", "Object:Write")
REMOVED_TYPES = ("ObjectRemoved", "Object:Delete")


@dataclass(frozen=True, slots=True)
class EventFilter:
    prefix: str = ""
    suffixes: tuple[str, ...] = HDF5_SUFFIXES
    event_types: tuple[str, ...] = CREATED_TYPES
    # Not in the repr: the listener's job id hashes the repr, and must not change when this field was added.
    removal_types: tuple[str, ...] = field(default=REMOVED_TYPES, repr=False)

    def _watched(self, event: ObjectEvent) -> bool:
        return event.key.startswith(self.prefix) and event.key.lower().endswith(tuple(s.lower() for s in self.suffixes))

    def accepts(self, event: ObjectEvent) -> bool:
        """A new object (version) to score."""
        return self._watched(event) and any(event.event_type.startswith(t) for t in self.event_types)

    def is_removal(self, event: ObjectEvent) -> bool:
        """A watched object was deleted: its finished item can leave the listener's job."""
        return self._watched(event) and any(event.event_type.startswith(t) for t in self.removal_types)
