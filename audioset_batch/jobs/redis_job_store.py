"""The job store on Redis: one hash per job, Lua scripts where counts must stay exact."""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Any

from audioset_batch.jobs.job_store import (
    FINAL_STATUSES,
    ItemEnd,
    JobStatus,
    UnknownJobError,
    UnknownRunError,
    new_job_id,
)

_FORGET_LUA = """
local n = 0
for i, source in ipairs(ARGV) do
  if redis.call('HGET', KEYS[1], source) == 'pending' then
    redis.call('HDEL', KEYS[1], source)
    n = n + 1
  end
end
if n > 0 then redis.call('HINCRBY', KEYS[2], 'total', -n) end
return n
"""

_DROP_FINISHED_LUA = """
local n = 0
for i, source in ipairs(ARGV) do
  local status = redis.call('HGET', KEYS[1], source)
  if status and status ~= 'pending' then
    redis.call('HDEL', KEYS[1], source)
    redis.call('HDEL', KEYS[3], source)
    redis.call('HINCRBY', KEYS[2], status, -1)
    n = n + 1
  end
end
if n > 0 then redis.call('HINCRBY', KEYS[2], 'total', -n) end
return n
"""

# KEYS: items, counts, ends, the job's own hash; ARGV: item, status, how it ended (JSON), clips, now.
_MARK_LUA = """
local old = redis.call('HGET', KEYS[1], ARGV[1])
if old ~= 'pending' then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HINCRBY', KEYS[2], ARGV[2], 1)
redis.call('HINCRBY', KEYS[2], 'clips', tonumber(ARGV[4]))
redis.call('HSET', KEYS[3], ARGV[1], ARGV[3])
redis.call('HSET', KEYS[4], 'last_end', ARGV[5])
return 1
"""


class RedisJobStore:
    """Keys under ``audioset:``; items in a hash per job, counters beside it."""

    def __init__(self, url: str, prefix: str = "audioset") -> None:
        import redis

        self.redis = redis.Redis.from_url(
            url,
            health_check_interval=30,
            socket_timeout=30,
            socket_connect_timeout=10,
            retry_on_timeout=True,
            decode_responses=True,
        )
        self.prefix = prefix
        self._mark = self.redis.register_script(_MARK_LUA)
        self._forget = self.redis.register_script(_FORGET_LUA)
        self._drop_finished = self.redis.register_script(_DROP_FINISHED_LUA)

    def _k(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    def create_job(self, name: str | None = None, job_id: str | None = None) -> str:
        job_id = job_id or new_job_id()
        created = time.time()
        if self.redis.hsetnx(self._k("job", job_id), "created", created):
            self.redis.hset(self._k("job", job_id), "name", name or job_id)
            self.redis.zadd(self._k("jobs"), {job_id: created})
        return job_id

    def add_items(self, job_id: str, sources: Iterable[str]) -> list[str]:
        added: list[str] = []
        batch: list[str] = []
        for source in sources:
            batch.append(source)
            if len(batch) >= 1000:
                added += self._add(job_id, batch)
                batch = []
        return added + (self._add(job_id, batch) if batch else [])

    def _add(self, job_id: str, sources: list[str]) -> list[str]:
        pipe = self.redis.pipeline()
        for source in sources:
            pipe.hsetnx(self._k("job", job_id, "items"), source, "pending")
        added = [s for s, new in zip(sources, pipe.execute(), strict=True) if new]
        if added:
            self.redis.hincrby(self._k("job", job_id, "counts"), "total", len(added))
        return added

    def forget_items(self, job_id: str, sources: Iterable[str]) -> int:
        keys = [self._k("job", job_id, "items"), self._k("job", job_id, "counts")]
        return int(self._forget(keys=keys, args=list(sources)))  # type: ignore[arg-type]

    def drop_finished_items(self, job_id: str, sources: Iterable[str]) -> int:
        keys = [self._k("job", job_id, "items"), self._k("job", job_id, "counts"), self._k("job", job_id, "ends")]
        dropped, batch = 0, []
        for source in sources:
            batch.append(source)
            if len(batch) >= 1000:  # keep each script call short: Redis runs it atomically
                dropped += int(self._drop_finished(keys=keys, args=batch))  # type: ignore[arg-type]
                batch = []
        if batch:
            dropped += int(self._drop_finished(keys=keys, args=batch))  # type: ignore[arg-type]
        return dropped

    def mark(self, job_id: str, source: str, status: str, end: ItemEnd | None = None) -> bool:
        if status not in FINAL_STATUSES:
            raise ValueError(f"status must be one of {FINAL_STATUSES}")
        ended = (end or ItemEnd()).to_json()
        now = time.time()
        keys = [
            self._k("job", job_id, "items"),
            self._k("job", job_id, "counts"),
            self._k("job", job_id, "ends"),
            self._k("job", job_id),
        ]
        args = [source, status, json.dumps({**ended, "status": status, "at": now}), ended["clips"], now]
        return bool(self._mark(keys=keys, args=args))

    def ends(self, job_id: str, status: str | None = None) -> dict[str, dict[str, Any]]:
        raw: dict[str, str] = self.redis.hgetall(self._k("job", job_id, "ends"))  # type: ignore[assignment]
        ends = {item: json.loads(value) for item, value in raw.items()}
        return {item: end for item, end in ends.items() if status is None or end.get("status") == status}

    def status(self, job_id: str) -> JobStatus:
        meta: dict[str, str] = self.redis.hgetall(self._k("job", job_id))  # type: ignore[assignment]
        if not meta:
            raise UnknownJobError(job_id)
        raw: dict[str, str] = self.redis.hgetall(self._k("job", job_id, "counts"))  # type: ignore[assignment]
        counts = {k: int(v) for k, v in raw.items()}
        return JobStatus(
            id=job_id,
            name=meta.get("name", job_id),
            created=float(meta["created"]),
            total=counts.get("total", 0),
            scored=counts.get("scored", 0),
            skipped=counts.get("skipped", 0),
            failed=counts.get("failed", 0),
            clips=counts.get("clips", 0),
            last_end=float(meta["last_end"]) if "last_end" in meta else None,
        )

    def items(self, job_id: str, status: str | None = None, prefix: str = "") -> dict[str, str]:
        key = self._k("job", job_id, "items")
        raw: dict[str, str]
        if prefix:
            # HSCAN's MATCH is a glob: escape the glob characters an object key may hold.
            pattern = "".join("\\" + c if c in "*?[]\\" else c for c in prefix) + "*"
            raw = dict(self.redis.hscan_iter(key, match=pattern, count=1000))  # type: ignore[arg-type]
        else:
            raw = self.redis.hgetall(key)  # type: ignore[assignment]
        return {k: v for k, v in raw.items() if status is None or v == status}

    def list_jobs(self, limit: int | None = 50) -> list[JobStatus]:
        last = -1 if limit is None else limit - 1
        ids: list[str] = self.redis.zrevrange(self._k("jobs"), 0, last)  # type: ignore[assignment]
        return [self.status(i) for i in ids]

    def delete_job(self, job_id: str) -> bool:
        pipe = self.redis.pipeline()  # MULTI/EXEC: a reader sees the job whole or not at all
        parts = ("items", "counts", "ends")
        pipe.delete(self._k("job", job_id), *(self._k("job", job_id, part) for part in parts))
        pipe.zrem(self._k("jobs"), job_id)
        deleted, _ = pipe.execute()
        return bool(deleted)

    def count_delivery(self, task_id: str) -> int:
        key = self._k("deliveries", task_id)
        pipe = self.redis.pipeline()
        pipe.incr(key)
        pipe.expire(key, 7 * 24 * 3600)
        return int(pipe.execute()[0])

    def incr_counter(self, name: str, amount: int = 1) -> None:
        self.redis.hincrby(self._k("counters"), name, amount)

    def counters(self) -> dict[str, int]:
        raw: dict[str, str] = self.redis.hgetall(self._k("counters"))  # type: ignore[assignment]
        return {k: int(v) for k, v in raw.items()}

    def put_run(self, run_id: str, record: dict[str, Any]) -> None:
        pipe = self.redis.pipeline()
        pipe.set(self._k("run", run_id), json.dumps(record))
        pipe.zadd(self._k("runs"), {run_id: float(record.get("created", time.time()))}, nx=True)
        pipe.execute()

    def get_run(self, run_id: str) -> dict[str, Any]:
        raw = self.redis.get(self._k("run", run_id))
        if raw is None:
            raise UnknownRunError(run_id)
        record: dict[str, Any] = json.loads(str(raw))
        return record

    def list_runs(self, limit: int = 50) -> list[dict[str, Any]]:
        ids: list[str] = self.redis.zrevrange(self._k("runs"), 0, limit - 1)  # type: ignore[assignment]
        return [self.get_run(i) for i in ids]
