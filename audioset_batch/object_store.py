"""Object storage behind one small interface: IBM COS / S3 via ibm-cos-sdk, or local folders.

URLs name both store and object: ``cos://bucket/key``, ``s3://bucket/key`` or
``file://bucket/key`` (a folder per bucket under ``AUDIOSET_LOCAL_ROOT``).
Downloads stream to a file; uploads of large files go in parts.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol, TypeVar
from urllib.parse import unquote_plus

from audioset_batch.errors import (
    AccessDeniedError,
    InvalidObjectKeyError,
    ObjectNotFoundError,
    SourceNotAllowedError,
    StorageError,
    TransientStorageError,
)

if TYPE_CHECKING:
    from audioset_batch.settings import Settings

REMOTE_SCHEMES = ("cos", "s3")
SCHEMES = (*REMOTE_SCHEMES, "file")
MULTIPART_THRESHOLD = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class ObjectURL:
    scheme: str
    bucket: str
    key: str

    @classmethod
    def parse(cls, url: str, default_bucket: str | None = None) -> ObjectURL:
        """Parse ``scheme://bucket/key``; a bare ``key`` needs ``default_bucket`` (cos)."""
        if "://" not in url:
            if not default_bucket:
                raise InvalidObjectKeyError(
                    f"{url!r} has no scheme; use cos://, s3:// or file:// (or set AUDIOSET_INPUT_BUCKET)"
                )
            return cls("cos", default_bucket, url.lstrip("/"))
        scheme, rest = url.split("://", 1)
        scheme = scheme.lower()
        if scheme not in SCHEMES:
            raise InvalidObjectKeyError(f"{url!r}: unsupported scheme {scheme!r}; use one of {', '.join(SCHEMES)}")
        bucket, _, key = rest.partition("/")
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

    def get_bytes(self, bucket: str, key: str) -> bytes | None: ...

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


def check_source(url: ObjectURL, allowed: tuple[str, ...]) -> ObjectURL:
    """A URL producers may enqueue and workers may read: a valid bucket and key, inside the allow-list.

    ``allowed`` holds ``bucket`` or ``bucket/prefix`` entries; empty allows any bucket.
    """
    check_bucket(url.bucket)
    check_key(url.key)
    if allowed and not any(
        url.bucket == entry.partition("/")[0] and url.key.startswith(entry.partition("/")[2]) for entry in allowed
    ):
        raise SourceNotAllowedError(
            f"{url.bucket}/{url.key} is outside AUDIOSET_ALLOWED_SOURCES ({', '.join(allowed)})"
        )
    return url


F = TypeVar("F", bound=Callable[..., Any])
# A full disk or quota clears when space is freed: retry. Anything else the OS refuses will not change.
_TRANSIENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EAGAIN, errno.EBUSY, errno.EIO}


def translate_os_error(exc: OSError, what: str) -> StorageError:
    """Map an OS error of the local store onto the storage errors the worker knows how to finish."""
    if exc.errno == errno.ENAMETOOLONG:
        return InvalidObjectKeyError(f"{what}: name too long for the local file system")
    if exc.errno in _TRANSIENT_ERRNOS:
        return TransientStorageError(f"{what}: {exc.strerror or exc}")
    if isinstance(exc, PermissionError):
        return AccessDeniedError(f"{what}: permission denied")
    return StorageError(f"{what}: {type(exc).__name__}: {exc.strerror or exc}")


def _os_errors(method: F) -> F:
    """Local-store methods raise storage errors, never a bare OSError (FileNotFoundError aside: callers map it)."""

    @functools.wraps(method)
    def wrapper(self: LocalStore, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise translate_os_error(exc, f"file://{'/'.join(str(a) for a in args if isinstance(a, str))}") from exc

    return wrapper  # type: ignore[return-value]


class LocalStore:
    """Buckets as folders under ``root``; writes are atomic (temp file + rename)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()

    def _bucket_dir(self, bucket: str) -> Path:
        return self.root / check_bucket(bucket)

    def _path(self, bucket: str, key: str) -> Path:
        base = self._bucket_dir(bucket)
        path = base / check_key(key)
        # Symlinks inside the bucket must not lead outside it.
        resolved = path.resolve()
        if not resolved.is_relative_to(base.resolve()):
            raise InvalidObjectKeyError(f"object key {key!r} resolves outside bucket {bucket!r}")
        return path

    @staticmethod
    def _info(key: str, path: Path) -> ObjectInfo:
        st = path.stat()
        tag = hashlib.md5(f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}".encode(), usedforsecurity=False).hexdigest()
        return ObjectInfo(key=key, size=st.st_size, etag=tag)

    @_os_errors
    def stat(self, bucket: str, key: str) -> ObjectInfo:
        path = self._path(bucket, key)
        if not path.is_file():
            raise ObjectNotFoundError(f"file://{bucket}/{key}: no such object")
        return self._info(key, path)

    def list(self, bucket: str, prefix: str = "") -> Iterator[ObjectInfo]:
        base = self._bucket_dir(bucket)
        if not base.is_dir():
            raise ObjectNotFoundError(f"file://{bucket}: no such bucket (folder {base})")
        yield from self._walk(base, "", prefix)

    def _walk(self, directory: Path, relative: str, prefix: str) -> Iterator[ObjectInfo]:
        """Keys in S3 order (lexicographic), descending only into folders that can match ``prefix``."""
        try:
            entries = list(os.scandir(directory))
        except FileNotFoundError:
            return
        named = []
        for entry in entries:
            if entry.name.startswith("."):
                continue  # temp files of in-flight writes, state files
            if entry.is_dir(follow_symlinks=False):
                named.append((relative + entry.name + "/", entry))
            elif entry.is_file(follow_symlinks=False):
                named.append((relative + entry.name, entry))
        for key, entry in sorted(named, key=lambda pair: pair[0]):
            if key.endswith("/"):
                if key.startswith(prefix) or prefix.startswith(key):
                    yield from self._walk(Path(entry.path), key, prefix)
            elif key.startswith(prefix):
                try:
                    yield self._info(key, Path(entry.path))
                except FileNotFoundError:
                    continue

    @_os_errors
    def download(self, bucket: str, key: str, fileobj: IO[bytes]) -> ObjectInfo:
        path = self._path(bucket, key)
        try:
            with path.open("rb") as src:
                info = self._info(key, path)
                shutil.copyfileobj(src, fileobj, 1 << 20)
        except FileNotFoundError as exc:
            raise ObjectNotFoundError(f"file://{bucket}/{key}: no such object") from exc
        return info

    @_os_errors
    def _write(self, bucket: str, key: str, writer: Any) -> None:
        path = self._path(bucket, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as fh:
                writer(fh)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def upload_file(self, path: Path, bucket: str, key: str, content_type: str = "application/octet-stream") -> None:
        def copy(fh: IO[bytes]) -> None:
            with path.open("rb") as src:
                shutil.copyfileobj(src, fh, 1 << 20)

        self._write(bucket, key, copy)

    def put_bytes(self, data: bytes, bucket: str, key: str, content_type: str = "application/octet-stream") -> None:
        self._write(bucket, key, lambda fh: fh.write(data))

    @_os_errors
    def get_bytes(self, bucket: str, key: str) -> bytes | None:
        path = self._path(bucket, key)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            return None

    @_os_errors
    def delete(self, bucket: str, key: str) -> None:
        self._path(bucket, key).unlink(missing_ok=True)


_TRANSIENT_CODES = {
    "InternalError",
    "ServiceUnavailable",
    "SlowDown",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "Throttling",
    "ThrottlingException",
    "500",
    "502",
    "503",
    "504",
}
_NOT_FOUND_CODES = {"NoSuchKey", "NoSuchBucket", "404", "NotFound"}
_DENIED_CODES = {"AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch", "Forbidden"}


def sdk_errors() -> tuple[type[BaseException], ...]:
    """The exceptions the SDK raises for failed requests. Anything else (a time-limit signal,
    a bug) passes through untranslated."""
    from ibm_botocore.exceptions import BotoCoreError, ClientError

    return (BotoCoreError, ClientError, OSError)


def translate_error(exc: BaseException, what: str) -> StorageError:
    """Map an SDK exception onto transient / not-found / denied / other."""
    from ibm_botocore.exceptions import BotoCoreError, ClientError

    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        message = f"{what}: {code or status} {error.get('Message', '')}".strip()
        if code in _NOT_FOUND_CODES or status == 404:
            return ObjectNotFoundError(message)
        if code in _DENIED_CODES or status in {401, 403}:
            return AccessDeniedError(message)
        if code in _TRANSIENT_CODES or status >= 500 or status == 429:
            return TransientStorageError(message)
        return StorageError(message)
    from ibm_botocore.exceptions import NoCredentialsError, PartialCredentialsError

    if isinstance(exc, NoCredentialsError | PartialCredentialsError):
        return AccessDeniedError(
            f"{what}: no COS credentials; set AUDIOSET_COS_ACCESS_KEY_ID and AUDIOSET_COS_SECRET_ACCESS_KEY "
            "(or AUDIOSET_COS_API_KEY with AUDIOSET_COS_INSTANCE_ID)"
        )
    if isinstance(exc, BotoCoreError | OSError):
        return TransientStorageError(f"{what}: {type(exc).__name__}: {exc}")
    return StorageError(f"{what}: {type(exc).__name__}: {exc}")


class CosStore:
    """IBM COS or any S3-compatible endpoint, through ``ibm-cos-sdk``."""

    def __init__(self, settings: Settings) -> None:
        import ibm_boto3
        from ibm_boto3.s3.transfer import TransferConfig
        from ibm_botocore.client import Config

        kwargs: dict[str, Any] = {"endpoint_url": settings.cos_endpoint}
        retries = {"max_attempts": 3, "mode": "standard"}
        if settings.cos_api_key is not None:
            kwargs.update(
                ibm_api_key_id=settings.cos_api_key.get_secret_value(),
                ibm_service_instance_id=settings.cos_instance_id,
            )
            if settings.cos_auth_endpoint:
                kwargs["ibm_auth_endpoint"] = settings.cos_auth_endpoint
            config = Config(signature_version="oauth", retries=retries, connect_timeout=10, read_timeout=60)
        else:
            if settings.cos_access_key_id is not None and settings.cos_secret_access_key is not None:
                kwargs.update(
                    aws_access_key_id=settings.cos_access_key_id.get_secret_value(),
                    aws_secret_access_key=settings.cos_secret_access_key.get_secret_value(),
                )
            config = Config(
                signature_version="s3v4",
                retries=retries,
                connect_timeout=10,
                read_timeout=60,
                s3={"addressing_style": "path"},
            )
            kwargs["region_name"] = settings.cos_region
        self.client = ibm_boto3.client("s3", config=config, **kwargs)
        self.transfer = TransferConfig(
            multipart_threshold=MULTIPART_THRESHOLD, multipart_chunksize=MULTIPART_THRESHOLD, max_concurrency=4
        )

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except sdk_errors() as exc:
            raise translate_error(exc, what) from exc

    def stat(self, bucket: str, key: str) -> ObjectInfo:
        head = self._call(f"cos://{bucket}/{key}", self.client.head_object, Bucket=bucket, Key=key)
        return ObjectInfo(key=key, size=int(head["ContentLength"]), etag=str(head["ETag"]).strip('"'))

    def list(self, bucket: str, prefix: str = "") -> Iterator[ObjectInfo]:
        paginator = self.client.get_paginator("list_objects_v2")
        pages = paginator.paginate(Bucket=bucket, Prefix=prefix, PaginationConfig={"PageSize": 1000})
        iterator = iter(pages)
        while True:
            page = self._call(f"cos://{bucket}/{prefix}", next, iterator, None)
            if page is None:
                return
            for item in page.get("Contents", []):
                yield ObjectInfo(key=item["Key"], size=int(item["Size"]), etag=str(item["ETag"]).strip('"'))

    def download(self, bucket: str, key: str, fileobj: IO[bytes]) -> ObjectInfo:
        what = f"cos://{bucket}/{key}"
        response = self._call(what, self.client.get_object, Bucket=bucket, Key=key)
        body = response["Body"]
        try:
            for block in body.iter_chunks(1 << 20):
                fileobj.write(block)
        except sdk_errors() as exc:
            raise translate_error(exc, what) from exc
        finally:
            body.close()
        return ObjectInfo(key=key, size=int(response["ContentLength"]), etag=str(response["ETag"]).strip('"'))

    def upload_file(self, path: Path, bucket: str, key: str, content_type: str = "application/octet-stream") -> None:
        self._call(
            f"cos://{bucket}/{key}",
            self.client.upload_file,
            str(path),
            bucket,
            key,
            ExtraArgs={"ContentType": content_type},
            Config=self.transfer,
        )

    def put_bytes(self, data: bytes, bucket: str, key: str, content_type: str = "application/octet-stream") -> None:
        self._call(
            f"cos://{bucket}/{key}", self.client.put_object, Bucket=bucket, Key=key, Body=data, ContentType=content_type
        )

    def get_bytes(self, bucket: str, key: str) -> bytes | None:
        try:
            response = self._call(f"cos://{bucket}/{key}", self.client.get_object, Bucket=bucket, Key=key)
        except ObjectNotFoundError:
            return None
        data: bytes = response["Body"].read()
        return data

    def delete(self, bucket: str, key: str) -> None:
        self._call(f"cos://{bucket}/{key}", self.client.delete_object, Bucket=bucket, Key=key)


_stores: dict[tuple[object, ...], ObjectStore] = {}


def store_for(scheme: str, settings: Settings) -> ObjectStore:
    """One store (one connection pool) per scheme and endpoint, reused across tasks in a process."""
    if scheme == "file":
        cache_key: tuple[object, ...] = ("file", str(settings.local_root.resolve()))
    else:
        secrets = (settings.cos_access_key_id, settings.cos_secret_access_key, settings.cos_api_key)
        cache_key = (
            "cos",
            settings.cos_endpoint,
            settings.cos_instance_id,
            *(s.get_secret_value() if s is not None else None for s in secrets),
        )
    store = _stores.get(cache_key)
    if store is None:
        store = LocalStore(settings.local_root) if scheme == "file" else CosStore(settings)
        _stores[cache_key] = store
    return store


def decode_key(raw: str) -> str:
    """Decode a key as S3 notifications send it: ``+`` is a space, then ``%xx`` escapes."""
    return unquote_plus(raw)
