"""The one place a job store is built from its URL: its own module, so the base module imports no backend."""

from __future__ import annotations

from audioset_batch.jobs.job_store import JobStore


def open_job_store(url: str) -> JobStore:
    """``redis://…``/``rediss://…`` or ``sqlite:///path``."""
    if url.startswith(("redis://", "rediss://", "unix://")):
        from audioset_batch.jobs.redis_job_store import RedisJobStore

        return RedisJobStore(url)
    if url.startswith("sqlite:///"):
        from audioset_batch.jobs.sqlite_job_store import SqliteJobStore

        return SqliteJobStore(url.removeprefix("sqlite:///"))
    raise ValueError(f"unsupported job store URL {url!r}; use redis://, rediss:// or sqlite:///path")
