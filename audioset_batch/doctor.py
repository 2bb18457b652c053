"""``audioset doctor``: check each dependency the service needs and say how to fix what fails."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass

from audioset_batch.settings import Settings


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
        from worker.config import transport_options

        return f"{settings.broker_url} ({transport_options(settings).get('data_folder_in', 'no folder')})"

    return _run("broker", "start Redis or fix AUDIOSET_BROKER_URL (redis://[:password@]host:port/db)", probe)


def check_state(settings: Settings) -> Check:
    def probe() -> str:
        from audioset_batch.jobs import open_job_store

        store = open_job_store(settings.effective_state_url)
        store.counters()
        return f"job store reachable ({settings.effective_state_url.split('://', 1)[0]})"

    return _run("job store", "fix AUDIOSET_STATE_URL (or the broker URL it defaults to)", probe)


def check_storage(settings: Settings, scheme: str) -> list[Check]:
    from audioset_batch.object_store import store_for

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
        return f"{scheme} store at {settings.cos_endpoint if scheme != 'file' else settings.local_root}"

    checks.append(_run("object store", hint, connect))
    if store is None:
        return checks
    buckets = [b for b in (settings.input_bucket, settings.results_bucket) if b]
    for bucket in dict.fromkeys(buckets):

        def listable(name: str = bucket) -> str:
            assert store is not None
            next(iter(store.list(name)), None)
            return "exists and can be listed"

        checks.append(_run(f"bucket {bucket}", f"create bucket {bucket!r} or fix its name in the settings", listable))
    probe_key = f"{settings.results_prefix}.doctor-{uuid.uuid4().hex[:8]}"

    def write() -> str:
        assert store is not None
        store.put_bytes(b"ok", settings.results_bucket, probe_key)
        store.delete(settings.results_bucket, probe_key)
        return f"wrote and deleted {settings.results_bucket}/{probe_key}"

    checks.append(_run("results write", "grant write access to the results bucket and prefix", write))
    return checks


def check_model(settings: Settings) -> Check:
    def probe() -> str:
        from audioset_batch.pipeline import load_predictor

        predictor = load_predictor(settings)
        return (
            f"{predictor.tag} ({predictor.manifest.architecture}, {predictor.classes} classes) "
            "loads in safe mode; sha256 matches"
        )

    return _run("model", "point AUDIOSET_MODEL_PATH at an artifact folder (model.keras + manifest.json)", probe)


def run_checks(settings: Settings, scheme: str) -> list[Check]:
    return [check_broker(settings), check_state(settings), *check_storage(settings, scheme), check_model(settings)]
