"""Buckets as folders under ``AUDIOSET_LOCAL_ROOT`` (``file://bucket/key``): the embedded mode's store."""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, TypeVar

from audioset_batch.errors import (
    InvalidObjectKeyError,
    ObjectNotFoundError,
)
from audioset_batch.storage.object_store import ObjectInfo, check_bucket, check_key, translate_os_error
from model.atomic_files import replacing

F = TypeVar("F", bound=Callable[..., Any])


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
        with replacing(self._path(bucket, key)) as tmp, tmp.open("wb") as fh:
            writer(fh)

    def upload_file(self, path: Path, bucket: str, key: str, content_type: str = "application/octet-stream") -> None:
        def copy(fh: IO[bytes]) -> None:
            with path.open("rb") as src:
                shutil.copyfileobj(src, fh, 1 << 20)

        self._write(bucket, key, copy)

    def put_bytes(self, data: bytes, bucket: str, key: str, content_type: str = "application/octet-stream") -> None:
        self._write(bucket, key, lambda fh: fh.write(data))

    @_os_errors
    def get_bytes(self, bucket: str, key: str, limit: int | None = None) -> bytes | None:
        path = self._path(bucket, key)
        try:
            with path.open("rb") as fh:
                return fh.read() if limit is None else fh.read(limit)
        except FileNotFoundError:
            return None

    @_os_errors
    def delete(self, bucket: str, key: str) -> None:
        self._path(bucket, key).unlink(missing_ok=True)
