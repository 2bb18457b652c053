"""``audioset doctor``: check each dependency the service needs and say how to fix what fails."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from audioset_batch.settings import Settings, mask_url


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    detail: str
    hint: str = ""


def _run(name: str, hint: str, probe: Callable[[], str]) -> Check:
    try:
        return Check(name, True, probe())
    except Exception as exc:
        return Check(name, False, f"{type(exc).__name__}: {exc}", hint)


def check_broker(settings: Settings) -> Check:
    def probe() -> str:
        if settings.broker_url.startswith(("redis://", "rediss://")):
            import redis

            redis.Redis.from_url(settings.broker_url, socket_connect_timeout=5, socket_timeout=5).ping()
            return "Redis answers PING"
        root = settings.local_root
        if not root.is_dir() or not os.access(root, os.W_OK | os.X_OK):
            raise FileNotFoundError(f"{root} is not a writable folder (the filesystem broker keeps its queue there)")
        return f"filesystem broker in {root.resolve() / '.broker'}"

    return _run("broker", "start Redis or fix AUDIOSET_BROKER_URL (redis://[:password@]host:port/db)", probe)


def check_state(settings: Settings) -> Check:
    def probe() -> str:
        url = settings.effective_state_url
        if url.startswith("sqlite:///"):
            # Opening a SQLite file creates it: look, do not touch.
            path = Path(url.removeprefix("sqlite:///"))
            if path.is_file():
                return f"job store {path} exists"
            if path.parent.is_dir() and os.access(path.parent, os.W_OK | os.X_OK):
                return f"job store {path} will be created on first use"
            raise FileNotFoundError(f"{path.parent} is not a writable folder")
        from audioset_batch.jobs.factory import open_job_store

        open_job_store(url).counters()
        return "job store reachable (redis)"

    return _run("job store", "fix AUDIOSET_STATE_URL (or the broker URL it defaults to)", probe)


def check_storage(settings: Settings, scheme: str) -> list[Check]:
    from audioset_batch.storage.factory import store_for

    hint = (
        "check AUDIOSET_COS_ENDPOINT and the credentials (HMAC keys or IAM API key + instance id)"
        if scheme != "file"
        else "check AUDIOSET_LOCAL_ROOT"
    )
    checks: list[Check] = []
    store = None

    def connect() -> str:
        nonlocal store
        store = store_for(scheme, settings)
        if scheme == "file" and not settings.local_root.is_dir():
            raise FileNotFoundError(f"{settings.local_root} is not a folder")
        return f"{scheme} store at {mask_url(settings.cos_endpoint or '') if scheme != 'file' else settings.local_root}"

    checks.append(_run("object store", hint, connect))
    if store is None or not checks[-1].ok:
        return checks
    listed: dict[str, Check] = {}
    for bucket in dict.fromkeys(b for b in (settings.input_bucket, settings.results_bucket) if b):

        def listable(name: str = bucket) -> str:
            assert store is not None
            next(iter(store.list(name)), None)
            return "exists and can be listed"

        create = f"mkdir {settings.local_root / bucket}" if scheme == "file" else f"create bucket {bucket!r}"
        listed[bucket] = _run(f"bucket {bucket}", f"{create}, or fix its name in the settings", listable)
    checks.extend(listed.values())
    if not listed[settings.results_bucket].ok:
        checks.append(Check("results write", False, "not tried: the results bucket is missing"))
        return checks
    probe_key = f"{settings.results_prefix}.doctor-{uuid.uuid4().hex[:8]}"

    def write() -> str:
        assert store is not None
        created = _missing_folders(settings, probe_key) if scheme == "file" else []
        try:
            store.put_bytes(b"ok", settings.results_bucket, probe_key)
            store.delete(settings.results_bucket, probe_key)
        finally:
            for folder in created:  # deepest first: leave the bucket as it was found
                with contextlib.suppress(OSError):
                    folder.rmdir()
        return f"wrote and deleted {settings.results_bucket}/{probe_key}"

    checks.append(_run("results write", "grant write access to the results bucket and prefix", write))
    return checks


def _missing_folders(settings: Settings, key: str) -> list[Path]:
    """The folders a write of ``key`` into the local results bucket would create, deepest first."""
    folder = (settings.local_root / settings.results_bucket / key).parent
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    return missing


def check_model(settings: Settings) -> Check:
    def probe() -> str:
        from audioset_batch.scoring.model_loading import load_predictor
        from model.artifact import check_artifact

        check_artifact(settings.model_path)
        predictor = load_predictor(settings)
        return (
            f"{predictor.tag} ({predictor.manifest.architecture}, {predictor.classes} classes, served by "
            f"{predictor.runtime}): every file matches its sha256; it loads"
        )

    return _run("model", "point AUDIOSET_MODEL_PATH at an artifact folder (model.keras + manifest.json)", probe)


def run_checks(settings: Settings, scheme: str) -> list[Check]:
    return [check_broker(settings), check_state(settings), *check_storage(settings, scheme), check_model(settings)]
