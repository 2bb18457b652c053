"""The job store in one SQLite file: the embedded mode's, and any single-host deployment's."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from audioset_batch.jobs.job_store import (
    FINAL_STATUSES,
    ItemEnd,
    JobStatus,
    UnknownJobError,
    UnknownRunError,
    new_job_id,
)


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
                CREATE TABLE IF NOT EXISTS changed (job TEXT PRIMARY KEY);
                CREATE TABLE IF NOT EXISTS claims (name TEXT PRIMARY KEY, until REAL);
                """
            )
            columns = {row[1] for row in conn.execute("PRAGMA table_info(items)")}
            added = (
                ("ended", "REAL"),
                ("clips", "INTEGER DEFAULT 0"),
                ("end_json", "TEXT"),
                ("gen", "INTEGER DEFAULT 0"),
            )
            for column, kind in added:
                if column not in columns:  # a state file from before the column existed
                    conn.execute(f"ALTER TABLE items ADD COLUMN {column} {kind}")
            job_columns = {row[1] for row in conn.execute("PRAGMA table_info(jobs)")}
            for column, kind in (("queue", "TEXT"), ("force", "INTEGER DEFAULT 0")):
                if column not in job_columns:
                    conn.execute(f"ALTER TABLE jobs ADD COLUMN {column} {kind}")

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            conn.execute("PRAGMA busy_timeout=30000")
            self._local.conn = conn
        return conn

    def create_job(
        self, name: str | None = None, job_id: str | None = None, queue: str | None = None, force: bool = False
    ) -> str:
        job_id = job_id or new_job_id()
        conn = self._conn()
        conn.execute(
            "INSERT OR IGNORE INTO jobs (id, name, created) VALUES (?, ?, ?)", (job_id, name or job_id, time.time())
        )
        if queue is not None:  # a watcher's job is made again at each start, perhaps for another queue
            conn.execute("UPDATE jobs SET queue = ?, force = ? WHERE id = ?", (queue, int(force), job_id))
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
                cursor = conn.execute(
                    "INSERT OR IGNORE INTO items (job, source, status) VALUES (?, ?, 'pending')", (job_id, source)
                )
                if cursor.rowcount == 1:
                    added.append(source)
            if added:
                conn.execute("INSERT OR IGNORE INTO changed VALUES (?)", (job_id,))
        return added

    def _delete_items(self, job_id: str, sources: Iterable[str], pending: bool) -> int:
        query = f"DELETE FROM items WHERE job = ? AND source = ? AND status {'=' if pending else '!='} 'pending'"
        with self._transaction() as conn:
            return sum(conn.execute(query, (job_id, source)).rowcount for source in sources)

    def forget_items(self, job_id: str, sources: Iterable[str]) -> int:
        return self._delete_items(job_id, sources, pending=True)

    def drop_finished_items(self, job_id: str, sources: Iterable[str]) -> int:
        return self._delete_items(job_id, sources, pending=False)

    def mark(self, job_id: str, source: str, status: str, end: ItemEnd | None = None, generation: int = 0) -> bool:
        if status not in FINAL_STATUSES:
            raise ValueError(f"status must be one of {FINAL_STATUSES}")
        ended, now = (end or ItemEnd()).to_json(), time.time()
        cursor = self._conn().execute(
            "UPDATE items SET status = ?, ended = ?, clips = ?, end_json = ? WHERE job = ? AND source = ? "
            "AND COALESCE(gen, 0) = ? AND (status = 'pending' OR (status = 'cancelled' AND ? != 'cancelled'))",
            (
                status,
                now,
                ended["clips"],
                json.dumps({**ended, "status": status, "at": now}),
                job_id,
                source,
                generation,
                status,
            ),
        )
        return cursor.rowcount == 1

    def take_changed(self) -> list[str]:
        with self._transaction() as conn:
            changed = [row[0] for row in conn.execute("SELECT job FROM changed ORDER BY job")]
            conn.execute("DELETE FROM changed")
        return changed

    def note_changed(self, job_id: str) -> None:
        self._conn().execute("INSERT OR IGNORE INTO changed VALUES (?)", (job_id,))

    def claim(self, name: str, seconds: float) -> bool:
        now = time.time()
        with self._transaction() as conn:
            row = conn.execute("SELECT until FROM claims WHERE name = ?", (name,)).fetchone()
            if row is not None and row[0] > now:
                return False
            conn.execute("INSERT OR REPLACE INTO claims VALUES (?, ?)", (name, now + seconds))
        return True

    def item_state(self, job_id: str, source: str) -> tuple[str | None, int]:
        row = (
            self._conn()
            .execute("SELECT status, COALESCE(gen, 0) FROM items WHERE job = ? AND source = ?", (job_id, source))
            .fetchone()
        )
        return (None, 0) if row is None else (row[0], int(row[1]))

    def retry(self, job_id: str, statuses: Iterable[str]) -> dict[str, int]:
        self.status(job_id)  # an unknown job is an error, not an empty retry
        wanted = [s for s in statuses if s in FINAL_STATUSES]
        marks = ", ".join("?" * len(wanted)) or "NULL"
        with self._transaction() as conn:
            rows = conn.execute(
                "UPDATE items SET status = 'pending', gen = COALESCE(gen, 0) + 1, ended = NULL, clips = 0, "
                f"end_json = NULL WHERE job = ? AND status IN ({marks}) RETURNING source, gen",
                (job_id, *wanted),
            ).fetchall()
        self.note_changed(job_id)
        return {source: int(gen) for source, gen in rows}

    def renew_pending(self, job_id: str, sources: Iterable[str]) -> dict[str, int]:
        renewed: dict[str, int] = {}
        with self._transaction() as conn:
            for source in sources:
                row = conn.execute(
                    "UPDATE items SET gen = COALESCE(gen, 0) + 1 WHERE job = ? AND source = ? AND status = 'pending' "
                    "RETURNING gen",
                    (job_id, source),
                ).fetchone()
                if row is not None:
                    renewed[source] = int(row[0])
        return renewed

    def cancel(self, job_id: str) -> int:
        self.status(job_id)
        now = time.time()
        ended = {**ItemEnd(message="cancelled before a worker took it").to_json(), "status": "cancelled", "at": now}
        cursor = self._conn().execute(
            "UPDATE items SET status = 'cancelled', ended = ?, end_json = ? WHERE job = ? AND status = 'pending'",
            (now, json.dumps(ended), job_id),
        )
        self.note_changed(job_id)
        return cursor.rowcount

    def ends(self, job_id: str, status: str | None = None) -> dict[str, dict[str, Any]]:
        rows = self._conn().execute(
            "SELECT source, end_json FROM items WHERE job = ? AND status != 'pending' AND (? IS NULL OR status = ?)",
            (job_id, status, status),
        )
        return {source: json.loads(raw) if raw else {"status": status} for source, raw in rows}

    def status(self, job_id: str) -> JobStatus:
        conn = self._conn()
        row = conn.execute("SELECT name, created, queue, force FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise UnknownJobError(job_id)
        counts = dict(
            conn.execute("SELECT status, COUNT(*) FROM items WHERE job = ? GROUP BY status", (job_id,)).fetchall()
        )
        clips, last_end = conn.execute(
            "SELECT COALESCE(SUM(clips), 0), MAX(ended) FROM items WHERE job = ?", (job_id,)
        ).fetchone()
        return JobStatus(
            id=job_id,
            name=row[0],
            created=row[1],
            total=sum(counts.values()),
            scored=counts.get("scored", 0),
            skipped=counts.get("skipped", 0),
            failed=counts.get("failed", 0),
            clips=int(clips),
            last_end=last_end,
            cancelled=counts.get("cancelled", 0),
            queue=row[2],
            force=bool(row[3]),
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
