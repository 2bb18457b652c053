"""``audioset run``: the whole service on one machine with no servers to set up.

Buckets are folders under ``--root`` (``incoming/`` and ``results/``), the
broker is kombu's filesystem transport, job state is a SQLite file, and one
Celery worker process plus a folder watcher run until interrupted.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import json
import logging
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from audioset_batch.errors import ConfigError
from audioset_batch.jobs.factory import open_job_store
from audioset_batch.jobs.job_store import JobStore
from audioset_batch.results.keys import result_keys
from audioset_batch.results.records import loads
from audioset_batch.run_lock import RunLock
from audioset_batch.settings import Settings, load_settings
from audioset_batch.storage.local_store import LocalStore
from audioset_batch.task_messages import MalformedMessageError, ScoreMessage

log = logging.getLogger("audioset.run")
INCOMING = "incoming"
RESULTS = "results"


def embedded_state_file(root: Path) -> Path:
    """Where ``audioset run --root ROOT`` keeps its job state (``audioset jobs`` looks there too)."""
    return root / ".state.db"


def embedded_environment(root: Path) -> dict[str, str]:
    """The settings the embedded mode overrides, as environment variables for the worker."""
    return {
        "AUDIOSET_BROKER_URL": "filesystem://",
        "AUDIOSET_LOCAL_ROOT": str(root),
        "AUDIOSET_INPUT_BUCKET": INCOMING,
        "AUDIOSET_RESULTS_BUCKET": RESULTS,
        "AUDIOSET_STATE_URL": f"sqlite:///{embedded_state_file(root)}",
    }


class EmbeddedService:
    def __init__(self, root: Path, concurrency: int = 1, interval: float = 1.0) -> None:
        self.root = root.resolve()
        self.env = embedded_environment(self.root)
        for bucket in (INCOMING, RESULTS):
            try:
                (self.root / bucket).mkdir(parents=True, exist_ok=True)
            except (FileExistsError, NotADirectoryError):
                raise ConfigError(
                    f"{self.root / bucket}: a file is in the way of the bucket folder; point AUDIOSET_LOCAL_ROOT "
                    "(or --root) at a folder, or move the file"
                ) from None
        os.environ.update(self.env)
        self.settings: Settings = load_settings()
        self.concurrency = concurrency
        self.interval = interval
        self.stop = threading.Event()
        self.signals: list[int] = []  # SIGINT/SIGTERM received since catch_stop_signals()
        self.worker: subprocess.Popen[bytes] | None = None
        self.thread: threading.Thread | None = None
        self.lock = RunLock(self.root / ".run.lock")

    @property
    def temp_folder(self) -> Path:
        return self.root / ".tmp"

    def recover(self) -> int:
        """Undo what a crash (kill -9, power loss) of an earlier run left behind; returns files re-sent.

        The filesystem broker drops a message when a worker takes it, so a file in hand at the crash is
        neither queued nor finished: its job item stays pending and the watcher would never send it again.
        This service owns its queue folder, so at start it empties the queue, forgets every pending item
        of its watch job (the watcher's first poll sends each one exactly once more; a file already scored
        is then skipped) and deletes the worker's leftover temp files.
        """
        shutil.rmtree(self.temp_folder, ignore_errors=True)
        self.temp_folder.mkdir(parents=True, exist_ok=True)
        for message in (self.root / ".broker" / "queue").glob("*.msg"):
            message.unlink(missing_ok=True)
        jobs, job, pending = self._pending()
        if pending:
            jobs.forget_items(job, pending)
            log.warning("%d file(s) left pending by an earlier run are sent again: %s", len(pending), pending[:5])
        return len(pending)

    def start(self, log_file: Path | None = None, say: Callable[[str], None] | None = None) -> None:
        """Start the worker process (its output to ``log_file`` if given) and the watcher thread.

        Raises :class:`RunLockedError` while another run is live in this folder.
        """
        from producers.watcher import Watcher
        from worker.app import make_app
        from worker.config import worker_command

        self.lock.acquire(say=say)  # before recover(): it empties the queue and temp folder a live run would be using
        self.recover()

        command = worker_command(
            self.concurrency, self.settings.queue, self.settings.log_level, "-n", f"embedded-{os.getpid()}@%h"
        )
        output = None
        if log_file is not None:
            log_file.parent.mkdir(parents=True, exist_ok=True)
            output = log_file.open("ab")
        env = {**os.environ, **self.env, "TMPDIR": str(self.temp_folder)}  # downloads land where recover() cleans
        assert self.lock.fd is not None
        # Its own process group: Ctrl-C reaches this process alone, which decides how the worker stops. The lock is
        # inherited, so a worker outliving a killed run keeps the folder busy; and it is told when the run dies.
        self.worker = subprocess.Popen(
            command,
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT if output else None,
            start_new_session=True,
            pass_fds=(self.lock.fd,),
            preexec_fn=_stop_with_parent,
        )
        watcher = Watcher(
            f"file://{INCOMING}/",
            self.settings,
            make_app(self.settings),
            open_job_store(self.settings.effective_state_url),
        )
        self.thread = threading.Thread(target=watcher.run, args=(self.stop, self.interval), daemon=True, name="watcher")
        self.thread.start()

    def wait_for_result(self, key: str, etag: str, timeout: float) -> dict[str, Any]:
        """Poll the results folder until ``key``'s summary (or error) for this ETag appears."""
        store = LocalStore(self.root)
        keys = result_keys(INCOMING, key, self.settings.results_prefix)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name in (keys.summary, keys.error):
                record = loads(store.get_bytes(RESULTS, name))
                if record and record.get("etag") == etag:
                    return record
            if self.worker is not None and self.worker.poll() is not None:
                raise RuntimeError(f"the worker exited with code {self.worker.returncode}")
            time.sleep(0.2)
        raise TimeoutError(f"no result for {key} after {timeout:.0f}s")

    def _pending(self) -> tuple[JobStore, str, list[str]]:
        """The pending items of this service's watch job (none before its first run), with the store and job."""
        from audioset_batch.jobs.job_store import UnknownJobError
        from audioset_batch.storage.object_store import ObjectURL
        from producers.watcher import watch_job_id

        jobs = open_job_store(self.settings.effective_state_url)
        job = watch_job_id(ObjectURL.parse(f"file://{INCOMING}/"))
        try:
            return jobs, job, list(jobs.items(job, status="pending"))
        except UnknownJobError:
            return jobs, job, []

    def in_hand(self) -> list[str]:
        """Files the worker has taken and not finished: pending in the watch job, no longer in the queue folder
        (the filesystem broker drops a message when a worker takes it)."""
        try:
            _jobs, _job, pending = self._pending()
        except (OSError, sqlite3.Error):
            return []
        queued = {_queued_item(path) for path in (self.root / ".broker" / "queue").glob("*.msg")}
        return [item.partition("#")[0].removeprefix("file://") for item in pending if item not in queued]

    def shutdown(self, signals: list[int] | None = None, say: Callable[[str], None] | None = None) -> None:
        """Stop the watcher, then the worker: at once when idle, after the file in hand when busy.

        ``signals`` holds the stop signals received so far (the handler keeps appending): a second one kills the
        worker at once, and the files in hand, still pending in the job, are sent again at the next start.
        """
        self.stop.set()
        worker = self.worker
        if worker is None or worker.poll() is not None:
            self.lock.release()
            return
        say = say or log.warning
        seen = len(signals) if signals else 0
        hand = self.in_hand()
        worker.send_signal(signal.SIGTERM)  # warm shutdown: finish the file in hand
        if hand:
            more = f" and {len(hand) - 3} more" if len(hand) > 3 else ""
            say(
                f"stopping: waiting for the worker to finish {', '.join(hand[:3])}{more}; "
                "Ctrl-C again stops now (the file is scored at the next start)"
            )
        started = time.monotonic()
        while worker.poll() is None:
            if signals is not None and len(signals) > seen:  # another Ctrl-C (or SIGTERM) since the first
                say(f"stopped at once; {len(hand) or 'any'} file(s) in hand are sent again at the next start")
                break
            if not hand and time.monotonic() - started > IDLE_STOP_SECONDS:
                break  # idle: nothing to lose, and container runtimes send SIGKILL after 10 s
            time.sleep(0.05)
        self._kill_worker_group()
        self.lock.release()

    def _kill_worker_group(self) -> None:
        worker = self.worker
        if worker is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(worker.pid, signal.SIGKILL)  # the worker and its pool children
        worker.wait()

    def catch_stop_signals(self) -> None:
        """From now on SIGINT/SIGTERM ask :meth:`serve_forever` to stop: call it before :meth:`start`, so a Ctrl-C
        while the worker and dashboard start stops the run like any other (it was a traceback and exit -2)."""

        def handler(signum: int, _frame: Any) -> None:
            self.signals.append(signum)
            self.stop.set()

        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)

    def serve_forever(self, on_tick: Callable[[], None] | None = None, say: Callable[[str], None] | None = None) -> int:
        """Block until SIGINT/SIGTERM or the worker dies; returns the exit code (130, 143, or 1 if the worker died)."""
        self.catch_stop_signals()  # again, if the caller did: the signals already received stay in self.signals
        while not self.stop.is_set():
            if self.worker is not None and self.worker.poll() is not None:
                log.error("worker exited with code %s", self.worker.returncode)
                self.shutdown()
                return 1
            if on_tick:
                on_tick()
            self.stop.wait(1.0)
        self.shutdown(self.signals, say)
        return 128 + self.signals[0] if self.signals else 0


IDLE_STOP_SECONDS = 3.0


def _queued_item(path: Path) -> str | None:
    """The job item a queued filesystem-broker message carries, or None if it is not one of ours."""
    try:
        message = json.loads(path.read_bytes())
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args, kwargs, _embed = json.loads(body)
        return ScoreMessage.parse(args, kwargs).item
    except (OSError, ValueError, KeyError, TypeError, MalformedMessageError):
        return None


def _stop_with_parent() -> None:
    """In the worker, before exec: a warm shutdown when the run dies (kill -9 included), on Linux."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
