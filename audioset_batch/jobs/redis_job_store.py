"""The job store on Redis: one hash per job, Lua scripts where counts must stay exact."""

from __future__ import annotations

import json
import os
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

# KEYS: items, counts, ends, the job's own hash, generations; ARGV: item, status, how it ended (JSON), clips, now,
# generation. A cancelled item that a worker was already scoring takes the status it really ended with.
_MARK_LUA = """
local old = redis.call('HGET', KEYS[1], ARGV[1])
if old ~= 'pending' and not (old == 'cancelled' and ARGV[2] ~= 'cancelled') then return 0 end
if tonumber(redis.call('HGET', KEYS[5], ARGV[1]) or '0') ~= tonumber(ARGV[6]) then return 0 end
if old == 'cancelled' then redis.call('HINCRBY', KEYS[2], 'cancelled', -1) end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HINCRBY', KEYS[2], ARGV[2], 1)
redis.call('HINCRBY', KEYS[2], 'clips', tonumber(ARGV[4]))
redis.call('HSET', KEYS[3], ARGV[1], ARGV[3])
redis.call('HSET', KEYS[4], 'last_end', ARGV[5])
return 1
"""

# KEYS: items, counts, ends, generations; ARGV: the statuses to send again. Returns item, generation, item, ...
_RETRY_LUA = """
local want = {}
for i, status in ipairs(ARGV) do want[status] = true end
local moved = {}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local item, status = all[i], all[i + 1]
  if want[status] then
    redis.call('HSET', KEYS[1], item, 'pending')
    redis.call('HINCRBY', KEYS[2], status, -1)
    local ended = redis.call('HGET', KEYS[3], item)
    if ended then
      local ok, data = pcall(cjson.decode, ended)
      if ok and type(data) == 'table' and tonumber(data['clips']) then
        redis.call('HINCRBY', KEYS[2], 'clips', string.format('%d', -tonumber(data['clips'])))
      end
      redis.call('HDEL', KEYS[3], item)
    end
    table.insert(moved, item)
    table.insert(moved, redis.call('HINCRBY', KEYS[4], item, 1))
  end
end
return moved
"""

# KEYS: items, generations; ARGV: items. Raises the generation of each still pending; returns item, generation, ...
_RENEW_LUA = """
local renewed = {}
for i, item in ipairs(ARGV) do
  if redis.call('HGET', KEYS[1], item) == 'pending' then
    table.insert(renewed, item)
    table.insert(renewed, redis.call('HINCRBY', KEYS[2], item, 1))
  end
end
return renewed
"""

# KEYS: items, counts, ends, the job's own hash; ARGV: now, how a cancelled item ended (JSON).
_CANCEL_LUA = """
local n = 0
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  if all[i + 1] == 'pending' then
    redis.call('HSET', KEYS[1], all[i], 'cancelled')
    redis.call('HSET', KEYS[3], all[i], ARGV[2])
    n = n + 1
  end
end
if n > 0 then
  redis.call('HINCRBY', KEYS[2], 'cancelled', n)
  redis.call('HSET', KEYS[4], 'last_end', ARGV[1])
end
return n
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
        self._retry = self.redis.register_script(_RETRY_LUA)
        self._cancel = self.redis.register_script(_CANCEL_LUA)
        self._renew = self.redis.register_script(_RENEW_LUA)

    def _k(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    def create_job(
        self, name: str | None = None, job_id: str | None = None, queue: str | None = None, force: bool = False
    ) -> str:
        job_id = job_id or new_job_id()
        created = time.time()
        if self.redis.hsetnx(self._k("job", job_id), "created", created):
            self.redis.hset(self._k("job", job_id), "name", name or job_id)
            self.redis.zadd(self._k("jobs"), {job_id: created})
        if queue is not None:  # a watcher's job is made again at each start, perhaps for another queue
            self.redis.hset(self._k("job", job_id), mapping={"queue": queue, "force": int(force)})
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
            self.note_changed(job_id)
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

    def mark(self, job_id: str, source: str, status: str, end: ItemEnd | None = None, generation: int = 0) -> bool:
        if status not in FINAL_STATUSES:
            raise ValueError(f"status must be one of {FINAL_STATUSES}")
        ended = (end or ItemEnd()).to_json()
        now = time.time()
        keys = [*self._item_keys(job_id), self._k("job", job_id), self._k("job", job_id, "gens")]
        args = [source, status, json.dumps({**ended, "status": status, "at": now}), ended["clips"], now, generation]
        marked = bool(self._mark(keys=keys, args=args))
        if marked:
            self.note_changed(job_id)
        return marked

    def take_changed(self) -> list[str]:
        pipe = self.redis.pipeline()  # MULTI/EXEC: a job changed meanwhile is in this answer or the next
        pipe.smembers(self._k("changed"))
        pipe.delete(self._k("changed"))
        changed, _ = pipe.execute()
        return sorted(changed)

    def note_changed(self, job_id: str) -> None:
        self.redis.sadd(self._k("changed"), job_id)

    def claim(self, name: str, seconds: float) -> bool:
        return bool(self.redis.set(self._k("claim", name), str(os.getpid()), nx=True, px=max(1, int(seconds * 1000))))

    def _item_keys(self, job_id: str) -> list[str]:
        return [self._k("job", job_id, part) for part in ("items", "counts", "ends")]

    def item_state(self, job_id: str, source: str) -> tuple[str | None, int]:
        pipe = self.redis.pipeline()
        pipe.hget(self._k("job", job_id, "items"), source)
        pipe.hget(self._k("job", job_id, "gens"), source)
        status, generation = pipe.execute()
        return status, int(generation or 0)

    def retry(self, job_id: str, statuses: Iterable[str]) -> dict[str, int]:
        self.status(job_id)  # an unknown job is an error, not an empty retry
        keys = [*self._item_keys(job_id), self._k("job", job_id, "gens")]
        flat = self._retry(keys=keys, args=[s for s in statuses if s in FINAL_STATUSES])
        self.note_changed(job_id)
        return {str(flat[i]): int(flat[i + 1]) for i in range(0, len(flat), 2)}

    def renew_pending(self, job_id: str, sources: Iterable[str]) -> dict[str, int]:
        keys = [self._k("job", job_id, "items"), self._k("job", job_id, "gens")]
        flat = self._renew(keys=keys, args=list(sources))
        return {str(flat[i]): int(flat[i + 1]) for i in range(0, len(flat), 2)}

    def cancel(self, job_id: str) -> int:
        self.status(job_id)
        now = time.time()
        ended = json.dumps(
            {**ItemEnd(message="cancelled before a worker took it").to_json(), "status": "cancelled", "at": now}
        )
        cancelled = int(self._cancel(keys=[*self._item_keys(job_id), self._k("job", job_id)], args=[now, ended]))
        self.note_changed(job_id)
        return cancelled

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
            cancelled=counts.get("cancelled", 0),
            queue=meta.get("queue"),
            force=meta.get("force") == "1",
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
        parts = ("items", "counts", "ends", "gens")
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
