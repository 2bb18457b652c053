"""Job state: which files a job holds and how each ended. Survives producer restarts.

Two backends behind one interface: Redis (the default with a Redis broker) and
SQLite (the embedded default). Each item moves once from ``pending`` to a final
status; a duplicate delivery cannot move it again, so counts never double.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

FINAL_STATUSES = ("scored", "skipped", "failed")
STATUSES = ("pending", *FINAL_STATUSES)
# Jobs a long-running producer keeps as its memory of what it already sent (see producers/).
PRODUCER_JOB_PREFIXES = ("watch-", "listen-")


class UnknownJobError(KeyError):
    """No job with that id exists in the state store."""

    what, listed_by = "job", "audioset jobs list"

    def __str__(self) -> str:
        return f"no {self.what} {self.args[0]!r} (see `{self.listed_by}`)"


class UnknownRunError(UnknownJobError):
    """No training run with that id exists in the state store."""

    what, listed_by = "training run", "audioset training list"


@dataclass(frozen=True, slots=True)
class JobStatus:
    id: str
    name: str
    created: float
    total: int
    scored: int
    skipped: int
    failed: int

    @property
    def done(self) -> int:
        return self.scored + self.skipped

    @property
    def pending(self) -> int:
        return max(0, self.total - self.done - self.failed)

    @property
    def finished(self) -> bool:
        return self.pending == 0

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "pending": self.pending, "finished": self.finished}


class JobStore(Protocol):
    def create_job(self, name: str | None = None, job_id: str | None = None) -> str: ...

    def add_items(self, job_id: str, sources: Iterable[str]) -> list[str]: ...

    def forget_items(self, job_id: str, sources: Iterable[str]) -> int:
        """Take back ``pending`` items (their tasks were never sent); returns how many."""
        ...

    def drop_finished_items(self, job_id: str, sources: Iterable[str]) -> int:
        """Remove finished items (their objects are gone); ``pending`` ones stay. Returns how many."""
        ...

    def mark(self, job_id: str, source: str, status: str) -> bool: ...

    def status(self, job_id: str) -> JobStatus: ...

    def items(self, job_id: str, status: str | None = None, prefix: str = "") -> dict[str, str]:
        """Item -> status, optionally only one status and only items starting with ``prefix``."""
        ...

    def list_jobs(self, limit: int | None = 50) -> list[JobStatus]: ...

    def delete_job(self, job_id: str) -> bool: ...

    def count_delivery(self, task_id: str) -> int: ...

    def incr_counter(self, name: str, amount: int = 1) -> None: ...

    def counters(self) -> dict[str, int]: ...

    def put_run(self, run_id: str, record: dict[str, Any]) -> None: ...

    def get_run(self, run_id: str) -> dict[str, Any]: ...

    def list_runs(self, limit: int = 50) -> list[dict[str, Any]]: ...


def new_job_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


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
    redis.call('HINCRBY', KEYS[2], status, -1)
    n = n + 1
  end
end
if n > 0 then redis.call('HINCRBY', KEYS[2], 'total', -n) end
return n
"""

_MARK_LUA = """
local old = redis.call('HGET', KEYS[1], ARGV[1])
if old ~= 'pending' then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HINCRBY', KEYS[2], ARGV[2], 1)
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
        keys = [self._k("job", job_id, "items"), self._k("job", job_id, "counts")]
        dropped, batch = 0, []
        for source in sources:
            batch.append(source)
            if len(batch) >= 1000:  # keep each script call short: Redis runs it atomically
                dropped += int(self._drop_finished(keys=keys, args=batch))  # type: ignore[arg-type]
                batch = []
        if batch:
            dropped += int(self._drop_finished(keys=keys, args=batch))  # type: ignore[arg-type]
        return dropped

    def mark(self, job_id: str, source: str, status: str) -> bool:
        if status not in FINAL_STATUSES:
            raise ValueError(f"status must be one of {FINAL_STATUSES}")
        keys = [self._k("job", job_id, "items"), self._k("job", job_id, "counts")]
        return bool(self._mark(keys=keys, args=[source, status]))

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
        pipe.delete(self._k("job", job_id), self._k("job", job_id, "items"), self._k("job", job_id, "counts"))
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


class SqliteJobStore:
    """A single SQLite file; safe across the processes of one machine (WAL, busy timeout)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._conn() as conn:
            conn.executescript(
                """
                PRAGMA journal_mode=WAL;
                CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, name TEXT, created REAL);
                CREATE TABLE IF NOT EXISTS items (job TEXT, source TEXT, status TEXT, PRIMARY KEY (job, source));
                CREATE TABLE IF NOT EXISTS deliveries (task_id TEXT PRIMARY KEY, n INTEGER);
                CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER);
                CREATE TABLE IF NOT EXISTS runs (id TEXT PRIMARY KEY, created REAL, record TEXT);
                """
            )

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            conn.execute("PRAGMA busy_timeout=30000")
            self._local.conn = conn
        return conn

    def create_job(self, name: str | None = None, job_id: str | None = None) -> str:
        job_id = job_id or new_job_id()
        self._conn().execute("INSERT OR IGNORE INTO jobs VALUES (?, ?, ?)", (job_id, name or job_id, time.time()))
        return job_id

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken up front so concurrent writers wait instead of failing."""
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def add_items(self, job_id: str, sources: Iterable[str]) -> list[str]:
        added: list[str] = []
        with self._transaction() as conn:
            for source in sources:
                cursor = conn.execute("INSERT OR IGNORE INTO items VALUES (?, ?, 'pending')", (job_id, source))
                if cursor.rowcount == 1:
                    added.append(source)
        return added

    def _delete_items(self, job_id: str, sources: Iterable[str], pending: bool) -> int:
        query = f"DELETE FROM items WHERE job = ? AND source = ? AND status {'=' if pending else '!='} 'pending'"
        with self._transaction() as conn:
            return sum(conn.execute(query, (job_id, source)).rowcount for source in sources)

    def forget_items(self, job_id: str, sources: Iterable[str]) -> int:
        return self._delete_items(job_id, sources, pending=True)

    def drop_finished_items(self, job_id: str, sources: Iterable[str]) -> int:
        return self._delete_items(job_id, sources, pending=False)

    def mark(self, job_id: str, source: str, status: str) -> bool:
        if status not in FINAL_STATUSES:
            raise ValueError(f"status must be one of {FINAL_STATUSES}")
        cursor = self._conn().execute(
            "UPDATE items SET status = ? WHERE job = ? AND source = ? AND status = 'pending'", (status, job_id, source)
        )
        return cursor.rowcount == 1

    def status(self, job_id: str) -> JobStatus:
        conn = self._conn()
        row = conn.execute("SELECT name, created FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise UnknownJobError(job_id)
        counts = dict(
            conn.execute("SELECT status, COUNT(*) FROM items WHERE job = ? GROUP BY status", (job_id,)).fetchall()
        )
        return JobStatus(
            id=job_id,
            name=row[0],
            created=row[1],
            total=sum(counts.values()),
            scored=counts.get("scored", 0),
            skipped=counts.get("skipped", 0),
            failed=counts.get("failed", 0),
        )

    def items(self, job_id: str, status: str | None = None, prefix: str = "") -> dict[str, str]:
        rows = (
            self._conn()
            .execute(
                "SELECT source, status FROM items WHERE job = ? AND substr(source, 1, ?) = ?",
                (job_id, len(prefix), prefix),
            )
            .fetchall()
        )
        return {s: st for s, st in rows if status is None or st == status}

    def list_jobs(self, limit: int | None = 50) -> list[JobStatus]:
        query = "SELECT id FROM jobs ORDER BY created DESC LIMIT ?"
        ids = [r[0] for r in self._conn().execute(query, (-1 if limit is None else limit,))]
        return [self.status(i) for i in ids]

    def delete_job(self, job_id: str) -> bool:
        with self._transaction() as conn:
            conn.execute("DELETE FROM items WHERE job = ?", (job_id,))
            deleted = conn.execute("DELETE FROM jobs WHERE id = ?", (job_id,)).rowcount
        return deleted == 1

    def count_delivery(self, task_id: str) -> int:
        conn = self._conn()
        conn.execute("INSERT INTO deliveries VALUES (?, 1) ON CONFLICT(task_id) DO UPDATE SET n = n + 1", (task_id,))
        return int(conn.execute("SELECT n FROM deliveries WHERE task_id = ?", (task_id,)).fetchone()[0])

    def incr_counter(self, name: str, amount: int = 1) -> None:
        self._conn().execute(
            "INSERT INTO counters VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = value + ?",
            (name, amount, amount),
        )

    def counters(self) -> dict[str, int]:
        return dict(self._conn().execute("SELECT name, value FROM counters").fetchall())

    def put_run(self, run_id: str, record: dict[str, Any]) -> None:
        self._conn().execute(
            "INSERT INTO runs VALUES (?, ?, ?) ON CONFLICT(id) DO UPDATE SET record = excluded.record",
            (run_id, float(record.get("created", time.time())), json.dumps(record)),
        )

    def get_run(self, run_id: str) -> dict[str, Any]:
        row = self._conn().execute("SELECT record FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise UnknownRunError(run_id)
        record: dict[str, Any] = json.loads(row[0])
        return record

    def list_runs(self, limit: int = 50) -> list[dict[str, Any]]:
        rows = self._conn().execute("SELECT record FROM runs ORDER BY created DESC LIMIT ?", (limit,)).fetchall()
        return [json.loads(r[0]) for r in rows]


def prunable_jobs(
    statuses: Iterable[JobStatus], older_than: float, now: float, include_unfinished: bool = False
) -> list[JobStatus]:
    """The jobs ``jobs prune`` removes: created ``older_than`` seconds before ``now`` and finished.

    A producer's job (``watch-…``, ``listen-…``) is never among them: it is the producer's
    memory of what it already sent, and without it every object would be enqueued again.
    """
    return [
        s
        for s in statuses
        if s.created <= now - older_than
        and (s.finished or include_unfinished)
        and not s.id.startswith(PRODUCER_JOB_PREFIXES)
    ]


def open_job_store(url: str) -> JobStore:
    """``redis://…``/``rediss://…`` or ``sqlite:///path``."""
    if url.startswith(("redis://", "rediss://", "unix://")):
        return RedisJobStore(url)
    if url.startswith("sqlite:///"):
        return SqliteJobStore(url.removeprefix("sqlite:///"))
    raise ValueError(f"unsupported state store URL {url!r}; use redis://, rediss:// or sqlite:///path")
