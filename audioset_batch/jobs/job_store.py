"""Job state: which files a job holds and how each ended. Survives producer restarts.

Two backends behind one interface: Redis (the default with a Redis broker) and
SQLite (the embedded default). Each item moves once from ``pending`` to a final
status; a duplicate delivery cannot move it again, so counts never double.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from audioset_batch.logs import printable

FINAL_STATUSES = ("scored", "skipped", "failed", "cancelled")
STATUSES = ("pending", *FINAL_STATUSES)
#: A failure message is kept up to this many characters (it can quote an untrusted file's contents).
MESSAGE_LIMIT = 1000
# Jobs a long-running producer keeps as its memory of what it already sent (see producers/).
PRODUCER_JOB_PREFIXES = ("watch-", "listen-")


class UnknownJobError(KeyError):
    """No job with that id exists in the job store."""

    what, listed_by = "job", "audioset jobs list"

    def __str__(self) -> str:
        return f"no {self.what} {self.args[0]!r} (see `{self.listed_by}`)"


class UnknownRunError(UnknownJobError):
    """No training run with that id exists in the job store."""

    what, listed_by = "training run", "audioset training list"


def iso(moment: float | None) -> str | None:
    """Epoch seconds as the ISO 8601 UTC time the results' records use."""
    return None if moment is None else datetime.fromtimestamp(moment, UTC).isoformat(timespec="milliseconds")


@dataclass(frozen=True, slots=True)
class ItemEnd:
    """How one file of a job ended, kept beside its status: ``jobs status --failed`` shows it."""

    error: str | None = None  # the error class, for a failed file
    message: str | None = None
    clips: int = 0
    seconds: float = 0.0
    url: str | None = None  # the object the task read: what `jobs retry` sends again

    def to_json(self) -> dict[str, Any]:
        """Bounded and escaped: the message may quote an untrusted file, and every reader prints it."""
        message = None if self.message is None else printable(self.message[:MESSAGE_LIMIT])
        error = None if self.error is None else printable(self.error[:200])
        return {
            "error": error,
            "message": message,
            "clips": int(self.clips),
            "seconds": round(self.seconds, 3),
            "url": self.url,
        }


@dataclass(frozen=True, slots=True)
class JobStatus:
    id: str
    name: str
    created: float
    total: int
    scored: int
    skipped: int
    failed: int
    clips: int = 0  # clips scored so far
    last_end: float | None = None  # when a file last ended
    cancelled: int = 0
    queue: str | None = None  # where its tasks go; a job from before this was kept has None
    force: bool = False  # its tasks were sent with --force

    @property
    def done(self) -> int:
        return self.scored + self.skipped

    @property
    def pending(self) -> int:
        return max(0, self.total - self.done - self.failed - self.cancelled)

    @property
    def state(self) -> str:
        """``running`` while files are pending, then ``cancelled`` if any file was, else ``finished``."""
        return "running" if self.pending else "cancelled" if self.cancelled else "finished"

    @property
    def finished(self) -> bool:
        return self.pending == 0

    @property
    def finished_at(self) -> float | None:
        return self.last_end if self.finished and self.total else None

    def rates(self, now: float | None = None) -> dict[str, float | None]:
        """Seconds since the job was made (to its end, once finished), files and clips per second, and the
        seconds left at that pace (None until a file has ended, 0 once finished)."""
        end = self.finished_at or (time.time() if now is None else now)
        seconds = max(end - self.created, 1e-9)
        ended = self.done + self.failed + self.cancelled
        per_file = ended / seconds
        eta = 0.0 if self.finished else (self.pending / per_file if ended else None)
        return {
            "seconds": round(seconds, 3),
            "files_per_second": round(per_file, 3),
            "clips_per_second": round(self.clips / seconds, 1),
            "eta_seconds": None if eta is None else round(eta, 1),
        }

    def to_json(self, now: float | None = None) -> dict[str, Any]:
        data = {**asdict(self), "pending": self.pending, "finished": self.finished, "state": self.state}
        data.pop("last_end")
        return {
            **data,
            "created_at": iso(self.created),
            "finished_at": iso(self.finished_at),
            **self.rates(now),
        }


class JobStore(Protocol):
    def create_job(
        self, name: str | None = None, job_id: str | None = None, queue: str | None = None, force: bool = False
    ) -> str:
        """A new job, or the one ``job_id`` names (a watcher's); ``queue`` and ``force`` are how its tasks are sent,
        kept so a task lost with the broker can be sent again alike (:mod:`worker.redelivery`)."""
        ...

    def add_items(self, job_id: str, sources: Iterable[str]) -> list[str]: ...

    def forget_items(self, job_id: str, sources: Iterable[str]) -> int:
        """Take back ``pending`` items (their tasks were never sent); returns how many."""
        ...

    def drop_finished_items(self, job_id: str, sources: Iterable[str]) -> int:
        """Remove finished items (their objects are gone); ``pending`` ones stay. Returns how many."""
        ...

    def mark(self, job_id: str, source: str, status: str, end: ItemEnd | None = None, generation: int = 0) -> bool:
        """Move a ``pending`` item to a final status, keeping how it ended; False if it was not pending, or if
        ``generation`` is not the item's (a message sent before a retry). A ``cancelled`` item that a worker was
        already scoring takes the status it really ended with."""
        ...

    def item_state(self, job_id: str, source: str) -> tuple[str | None, int]:
        """The item's status (None if the job does not hold it) and generation."""
        ...

    def retry(self, job_id: str, statuses: Iterable[str]) -> dict[str, int]:
        """Items with one of these final statuses back to ``pending``, each with its generation raised (so a
        message sent before cannot mark it); returns item -> new generation."""
        ...

    def renew_pending(self, job_id: str, sources: Iterable[str]) -> dict[str, int]:
        """Raise the generation of each of these items that is still ``pending``, so that only a message sent now
        can mark it (one lost with the broker that turns up after all is not scored); returns item -> generation."""
        ...

    def cancel(self, job_id: str) -> int:
        """Every ``pending`` item ends ``cancelled``; returns how many."""
        ...

    def take_changed(self) -> list[str]:
        """The jobs changed since the last call (items added, ended, retried or cancelled), forgetting them."""
        ...

    def note_changed(self, job_id: str) -> None:
        """Count a job as changed again (its manifest could not be written)."""
        ...

    def claim(self, name: str, seconds: float) -> bool:
        """Hold ``name`` for ``seconds`` unless another process holds it: one manifest writer at a time."""
        ...

    def ends(self, job_id: str, status: str | None = None) -> dict[str, dict[str, Any]]:
        """Item -> how it ended (:meth:`ItemEnd.to_json`, plus ``status`` and ``at``), for ended items."""
        ...

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


_VERSION = re.compile(r"#[0-9A-Fa-f-]{8,}$")


def item_url(item: str, end: dict[str, Any] | None = None) -> str:
    """The object URL an item stands for: the one its task read, or (for items ended before items kept it) the
    item itself, ``<url>`` or a watcher's ``<url>#<etag>``."""
    return str((end or {}).get("url") or _VERSION.sub("", item))


def new_job_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


def find_job(store: JobStore, ref: str) -> str:
    """A job id from an id or a job name (``enqueue --job NAME``); a name used twice means its newest job."""
    return find_job_status(store, ref).id


def find_job_status(store: JobStore, ref: str) -> JobStatus:
    """:func:`find_job`'s job with its status, read once (a page that shows the job needs both)."""
    try:
        return store.status(ref)
    except UnknownJobError:
        pass
    for status in store.list_jobs(None):  # newest first
        if status.name == ref:
            return status
    raise UnknownJobError(ref)


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
