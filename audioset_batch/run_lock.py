"""One ``audioset run`` per folder: an OS file lock that dies with the processes holding it.

A second run in the same folder would take the first one's queue for "left pending by a crash", send its files
again and delete its downloads. ``flock`` is released by the kernel when the last process holding the file closes
it, so a run killed with ``kill -9`` never blocks the next start, and a worker that outlives its run (finishing
the file in hand) keeps the folder busy until it exits.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from audioset_batch.errors import AudiosetError


class RunLockedError(AudiosetError):
    """Another ``audioset run`` (or its worker) is live in this folder."""


class RunLock:
    """Held from :meth:`acquire` until :meth:`release` or until every process that inherited :attr:`fd` exits."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None

    def acquire(self, wait_for_orphan: float = 30.0, say: Callable[[str], None] | None = None) -> None:
        """Take the lock, or raise :class:`RunLockedError` naming the live run.

        A lock held only by the worker of a run that is gone (it finishes its file, then exits) is waited for, up to
        ``wait_for_orphan`` seconds.
        """
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        deadline = time.monotonic() + wait_for_orphan
        told = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                holder = os.pread(fd, 200, 0).decode(errors="replace").split()
                orphan = len(holder) >= 2 and holder[0].isdigit() and not _alive(int(holder[0]))
                if not orphan or time.monotonic() > deadline:
                    os.close(fd)
                    raise RunLockedError(self._busy_message(holder)) from None
                if say is not None and not told:
                    say("waiting for the worker of an earlier run in this folder to finish its file…")
                    told = True
                time.sleep(0.2)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {datetime.now(UTC).isoformat(timespec='seconds')}\n".encode(), 0)
        self.fd = fd

    def _busy_message(self, holder: list[str]) -> str:
        folder = self.path.parent
        if len(holder) < 2 or not holder[0].isdigit():
            return f"another `audioset run` is live in {folder}; stop it first, or give this one another --root"
        pid, since = int(holder[0]), holder[1]
        if _alive(pid):
            return (
                f"another `audioset run` is live in {folder} (pid {pid}, since {since}); stop it first "
                "(Ctrl-C in its terminal, or kill -TERM), or give this one another --root"
            )
        return (
            f"the worker of an `audioset run` in {folder} (pid {pid}, since {since}, now gone) is still finishing "
            "its file; wait a moment and start again"
        )

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
