"""``audioset run``: the whole service on one machine with no servers to set up.

Buckets are folders under ``--root`` (``incoming/`` and ``results/``), the
broker is kombu's filesystem transport, job state is a SQLite file, and one
Celery worker process plus a folder watcher run until interrupted.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from audioset_batch.errors import ConfigError
from audioset_batch.jobs import open_job_store
from audioset_batch.local_store import LocalStore
from audioset_batch.results import loads, result_keys
from audioset_batch.settings import Settings, load_settings

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
        self.worker: subprocess.Popen[bytes] | None = None
        self.thread: threading.Thread | None = None

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
        from audioset_batch.jobs import UnknownJobError
        from audioset_batch.object_store import ObjectURL
        from producers.watcher import watch_job_id

        shutil.rmtree(self.temp_folder, ignore_errors=True)
        self.temp_folder.mkdir(parents=True, exist_ok=True)
        for message in (self.root / ".broker" / "queue").glob("*.msg"):
            message.unlink(missing_ok=True)
        jobs = open_job_store(self.settings.effective_state_url)
        job = watch_job_id(ObjectURL.parse(f"file://{INCOMING}/"))
        try:
            pending = list(jobs.items(job, status="pending"))
        except UnknownJobError:
            return 0
        if pending:
            jobs.forget_items(job, pending)
            log.warning("%d file(s) left pending by an earlier run are sent again: %s", len(pending), pending[:5])
        return len(pending)

    def start(self, log_file: Path | None = None) -> None:
        """Start the worker process (its output to ``log_file`` if given) and the watcher thread."""
        from producers.watcher import Watcher
        from worker.app import make_app
        from worker.config import worker_command

        self.recover()

        command = worker_command(
            self.concurrency, self.settings.queue, self.settings.log_level, "-n", f"embedded-{os.getpid()}@%h"
        )
        output = None
        if log_file is not None:
            log_file.parent.mkdir(parents=True, exist_ok=True)
            output = log_file.open("ab")
        env = {**os.environ, **self.env, "TMPDIR": str(self.temp_folder)}  # downloads land where recover() cleans
        self.worker = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT if output else None)
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

    def shutdown(self) -> None:
        self.stop.set()
        if self.worker is not None and self.worker.poll() is None:
            self.worker.send_signal(signal.SIGTERM)  # warm shutdown: finish the file in hand
            try:
                self.worker.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.worker.kill()
                self.worker.wait()

    def serve_forever(self, on_tick: Callable[[], None] | None = None) -> int:
        """Block until SIGINT/SIGTERM or the worker dies."""
        got: list[int] = []

        def handler(signum: int, _frame: Any) -> None:
            got.append(signum)
            self.stop.set()

        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGTERM, handler)
        while not self.stop.is_set():
            if self.worker is not None and self.worker.poll() is not None:
                log.error("worker exited with code %s", self.worker.returncode)
                return 1
            if on_tick:
                on_tick()
            self.stop.wait(1.0)
        return 0
