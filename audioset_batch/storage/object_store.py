"""Object storage behind one small interface: IBM COS / S3 via ibm-cos-sdk, or local folders.

URLs name both store and object: ``cos://bucket/key``, ``s3://bucket/key`` or
``file://bucket/key`` (a folder per bucket under ``AUDIOSET_LOCAL_ROOT``).
Downloads stream to a file; uploads of large files go in parts.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Protocol
from urllib.parse import unquote_plus

from audioset_batch.errors import (
    AccessDeniedError,
    InvalidObjectKeyError,
    SourceNotAllowedError,
    StorageError,
    TransientStorageError,
)

if TYPE_CHECKING:
    pass

REMOTE_SCHEMES = ("cos", "s3")
SCHEMES = (*REMOTE_SCHEMES, "file")
MULTIPART_THRESHOLD = 64 * 1024 * 1024
HDF5_SUFFIXES = (".h5", ".hdf5")


@dataclass(frozen=True, slots=True)
class ObjectURL:
    scheme: str
    bucket: str
    key: str

    @classmethod
    def parse(cls, url: str) -> ObjectURL:
        """Parse ``scheme://bucket/key``. A bare key is :func:`audioset_batch.storage.locations.in_input_bucket`'s."""
        if "://" not in url:
            raise InvalidObjectKeyError(f"{url!r} has no scheme; use cos://, s3:// or file://")
        scheme, rest = url.split("://", 1)
        scheme = scheme.lower()
        if scheme not in SCHEMES:
            raise InvalidObjectKeyError(f"{url!r}: unsupported scheme {scheme!r}; use one of {', '.join(SCHEMES)}")
        bucket, _, key = rest.partition("/")
        if not bucket and scheme == "file":
            raise InvalidObjectKeyError(f"{url!r} is a local path; here give a bucket URL, file://bucket/key")
        if not bucket:
            raise InvalidObjectKeyError(f"{url!r}: missing bucket name")
        return cls(scheme, bucket, key)

    def with_key(self, key: str) -> ObjectURL:
        return ObjectURL(self.scheme, self.bucket, key)

    @property
    def is_remote(self) -> bool:
        return self.scheme in REMOTE_SCHEMES

    def __str__(self) -> str:
        return f"{self.scheme}://{self.bucket}/{self.key}"


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    key: str
    size: int
    etag: str


class ObjectStore(Protocol):
    """What the pipeline needs from storage; both implementations pass the same tests."""

    def stat(self, bucket: str, key: str) -> ObjectInfo: ...

    def list(self, bucket: str, prefix: str = "") -> Iterator[ObjectInfo]: ...

    def download(self, bucket: str, key: str, fileobj: IO[bytes]) -> ObjectInfo: ...

    def upload_file(self, path: Path, bucket: str, key: str, content_type: str = ...) -> None: ...

    def put_bytes(self, data: bytes, bucket: str, key: str, content_type: str = ...) -> None: ...

    def get_bytes(self, bucket: str, key: str, limit: int | None = None) -> bytes | None:
        """The object's bytes (only its first ``limit`` with one), or None if it does not exist."""
        ...

    def delete(self, bucket: str, key: str) -> None: ...


def check_key(key: str) -> str:
    """Refuse keys that could escape a bucket folder or a results prefix."""
    if not key or key.startswith("/") or "\\" in key or "\x00" in key:
        raise InvalidObjectKeyError(f"invalid object key {key!r}")
    if any(part in {"..", "."} for part in key.split("/")) or "//" in key:
        raise InvalidObjectKeyError(f"object key {key!r} has '.', '..' or empty path segments")
    return key


def check_bucket(bucket: str) -> str:
    """Refuse bucket names no store accepts and that could name a folder outside the local root."""
    if (
        not bucket
        or len(bucket) > 255
        or bucket in {".", ".."}
        or bucket.startswith(".")
        or any(c in bucket for c in "/\\\x00")
        or not bucket.isprintable()
    ):
        raise InvalidObjectKeyError(f"invalid bucket name {bucket!r}")
    return bucket


def entries(allowed: tuple[str, ...]) -> list[tuple[str, str]]:
    """``AUDIOSET_ALLOWED_SOURCES`` entries as (bucket, key prefix); a bare bucket allows all of it."""
    return [(entry.partition("/")[0], entry.partition("/")[2]) for entry in allowed]


def check_bucket_allowed(bucket: str, allowed: tuple[str, ...]) -> None:
    """Before listing a bucket: refuse one that no allow-list entry names."""
    if allowed and bucket not in {name for name, _ in entries(allowed)}:
        raise SourceNotAllowedError(f"bucket {bucket!r} is outside AUDIOSET_ALLOWED_SOURCES ({', '.join(allowed)})")


def check_source(url: ObjectURL, allowed: tuple[str, ...]) -> ObjectURL:
    """A URL producers may enqueue and workers may read: a valid bucket and key, inside the allow-list.

    ``allowed`` holds ``bucket`` or ``bucket/prefix`` entries; empty allows any bucket.
    """
    check_bucket(url.bucket)
    check_key(url.key)
    if allowed and not any(url.bucket == bucket and url.key.startswith(prefix) for bucket, prefix in entries(allowed)):
        raise SourceNotAllowedError(
            f"{url.bucket}/{url.key} is outside AUDIOSET_ALLOWED_SOURCES ({', '.join(allowed)})"
        )
    return url


# A full disk or quota clears when space is freed: retry. Anything else the OS refuses will not change.
_TRANSIENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EAGAIN, errno.EBUSY, errno.EIO}


def translate_os_error(exc: OSError, what: str) -> StorageError:
    """Map an OS error (a folder bucket, the worker's temp disk) onto the storage errors the worker knows how
    to finish: a full disk is transient, a name too long is an invalid key, the rest is final."""
    if exc.errno == errno.ENAMETOOLONG:
        return InvalidObjectKeyError(f"{what}: name too long for the local file system")
    if exc.errno in _TRANSIENT_ERRNOS:
        return TransientStorageError(f"{what}: {exc.strerror or exc}")
    if isinstance(exc, PermissionError):
        return AccessDeniedError(f"{what}: permission denied")
    return StorageError(f"{what}: {type(exc).__name__}: {exc.strerror or exc}")


def decode_key(raw: str) -> str:
    """Decode a key as S3 notifications send it: ``+`` is a space, then ``%xx`` escapes."""
    return unquote_plus(raw)


def is_hdf5_key(key: str) -> bool:
    return key.lower().endswith(HDF5_SUFFIXES)


def is_result_key(bucket: str, key: str, results_bucket: str, results_prefix: str) -> bool:
    """True for objects this service wrote: producers must never feed results back in."""
    return bucket == results_bucket and bool(results_prefix) and key.startswith(results_prefix)
