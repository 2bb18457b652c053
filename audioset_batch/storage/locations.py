"""What a file or URL argument points at: one rule for every command.

* ``cos://bucket/key`` and ``s3://bucket/key``: an object in the COS/S3 store; a key ending in ``/``
  (or naming no object) is a prefix.
* ``file://bucket/key``: the folder bucket ``bucket`` under ``AUDIOSET_LOCAL_ROOT``, as the workers see it.
* ``file:///absolute/path``: a local file or folder.
* no scheme: a local file or folder, relative to the current directory. Only where it names
  nothing that exists, and ``AUDIOSET_INPUT_BUCKET`` is set, is it a key in that bucket.

A folder or prefix stands for every ``.h5``/``.hdf5`` file under it (never result objects, never symlinks).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import unquote

from audioset_batch.errors import LocationError, ObjectNotFoundError
from audioset_batch.settings import Settings
from audioset_batch.storage.factory import store_for
from audioset_batch.storage.object_store import ObjectInfo, ObjectURL, check_bucket_allowed, is_hdf5_key, is_result_key

Location = ObjectURL | Path
FORMS = "a local path, file:///absolute/path, file://bucket/key, cos://bucket/key or s3://bucket/key"


def parse(text: str, settings: Settings) -> Location:
    """The argument as an object URL or a local path, by the rule above."""
    if not text.strip():
        raise LocationError(f"empty location; give {FORMS}")
    if text[:8].lower() == "file:///":
        return Path(unquote(text[7:]))
    if "://" in text:
        return ObjectURL.parse(text)
    path = Path(text).expanduser()
    if path.exists() or path.is_symlink():
        return path
    if settings.input_bucket:
        return in_input_bucket(text, settings)
    raise LocationError(f"{text}: no such file or folder (give {FORMS})")


def in_input_bucket(key: str, settings: Settings) -> ObjectURL:
    """A bare key names an object in ``AUDIOSET_INPUT_BUCKET`` of the configured store (COS when an endpoint
    is set, else folder buckets): the one rule for names without a scheme, in commands and in queued messages."""
    if not settings.input_bucket:
        raise LocationError(f"{key!r} has no scheme; use {FORMS} (or set AUDIOSET_INPUT_BUCKET)")
    return ObjectURL(settings.store_scheme, settings.input_bucket, key.lstrip("/"))


def message_url(text: str, settings: Settings) -> ObjectURL:
    """The object a queued message names: a bucket URL as it is, or a bare key by :func:`in_input_bucket`."""
    return ObjectURL.parse(text) if "://" in text else in_input_bucket(text, settings)


def local_inputs(path: Path) -> list[Path]:
    """A file is itself; a folder is its HDF5 files, recursively, in name order."""
    if path.is_symlink() and path.is_dir():
        raise LocationError(f"{path}: a symlinked folder is not followed; give the folder it points to")
    if path.is_file():
        return [path]
    if not path.exists():
        raise LocationError(f"{path}: no such file or folder")
    return sorted(p for p in path.rglob("*") if is_hdf5_key(p.name) and p.is_file() and not p.is_symlink())


def list_inputs(prefix: ObjectURL, settings: Settings) -> Iterator[ObjectInfo]:
    """Every ``.h5``/``.hdf5`` object under the prefix, in key order, leaving out result objects."""
    for info in store_for(prefix.scheme, settings).list(prefix.bucket, prefix.key):
        if is_hdf5_key(info.key) and not is_result_key(
            prefix.bucket, info.key, settings.results_bucket, settings.results_prefix
        ):
            yield info


def object_inputs(url: ObjectURL, settings: Settings) -> Iterator[ObjectURL]:
    """An object URL yields itself; a prefix yields every HDF5 object under it."""
    check_bucket_allowed(url.bucket, settings.allowed_sources)
    if url.key and not url.key.endswith("/") and is_hdf5_key(url.key):
        try:
            store_for(url.scheme, settings).stat(url.bucket, url.key)
            yield url
            return
        except ObjectNotFoundError:
            pass  # maybe a prefix that happens to end in .h5; list it below
    for info in list_inputs(url, settings):
        yield url.with_key(info.key)


def inputs(text: str, settings: Settings) -> list[Location]:
    """The HDF5 files an argument names; naming none is a :class:`LocationError`, never an empty success."""
    where = parse(text, settings)
    found: list[Location] = (
        list(local_inputs(where)) if isinstance(where, Path) else list(object_inputs(where, settings))
    )
    if not found:
        raise LocationError(f"{text}: no .h5 or .hdf5 file there")
    return found


def identity(location: Location, settings: Settings) -> str:
    """Which file a location is, however it was written: its absolute path (a ``file://bucket/key`` URL is the
    file under ``AUDIOSET_LOCAL_ROOT`` it reads), or its URL."""
    if isinstance(location, ObjectURL) and location.scheme == "file":
        return str((settings.local_root / location.bucket / location.key).resolve())
    return str(location.resolve()) if isinstance(location, Path) else str(location)


def distinct_inputs(texts: Iterable[str], settings: Settings) -> tuple[dict[str, Location], list[Location]]:
    """The files several arguments name, by :func:`identity`, each once in the order first named, and the ones
    named again (a file given twice, also inside a folder given, or by its path and its ``file://`` URL)."""
    found: dict[str, Location] = {}
    repeated: list[Location] = []
    for text in texts:
        for location in inputs(text, settings):
            key = identity(location, settings)
            if key in found:
                repeated.append(location)
            else:
                found[key] = location
    return found, repeated


def as_bucket_url(path: Path, settings: Settings) -> ObjectURL:
    """A local path inside ``AUDIOSET_LOCAL_ROOT`` as the ``file://bucket/key`` URL workers read it by."""
    root = settings.local_root.resolve()
    resolved = path.resolve()
    try:
        parts = resolved.relative_to(root).parts
    except ValueError:
        raise LocationError(
            f"{path}: workers read local files through AUDIOSET_LOCAL_ROOT ({root}); put it in a bucket "
            "folder there (e.g. incoming/), or point AUDIOSET_LOCAL_ROOT at the folder above its bucket"
        ) from None
    if not parts:
        raise LocationError(f"{path} is AUDIOSET_LOCAL_ROOT itself; give a bucket folder inside it")
    key = "/".join(parts[1:])
    if resolved.is_dir() and key:
        key += "/"
    return ObjectURL("file", parts[0], key)


def queue_url(text: str, settings: Settings) -> ObjectURL:
    """What a producer queues for an argument: object URLs as they are, local paths as folder-bucket URLs."""
    where = parse(text, settings)
    return as_bucket_url(where, settings) if isinstance(where, Path) else where


def results_url(text: str | None, settings: Settings) -> Location:
    """Where results are read from: the argument, or the configured results bucket and prefix."""
    if text is None:
        return ObjectURL(settings.store_scheme, settings.results_bucket, settings.results_prefix)
    where = parse(text, settings)
    if isinstance(where, Path) and not where.is_dir():
        raise LocationError(f"{text}: not a folder of results")
    return where


@contextmanager
def local_file(location: Location, settings: Settings, suffix: str = "") -> Iterator[Path]:
    """A local path holding the location's bytes: the file itself, or a temporary copy of the object,
    removed when the block ends."""
    if isinstance(location, Path):
        yield location
        return
    with tempfile.NamedTemporaryFile(suffix=suffix) as tmp:
        store_for(location.scheme, settings).download(location.bucket, location.key, tmp)
        tmp.flush()
        yield Path(tmp.name)
