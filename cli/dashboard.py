"""``audioset ui``: the web dashboard over the job store and results the other commands read."""

from __future__ import annotations

import signal
import threading
from typing import TYPE_CHECKING

import click

from audioset_batch.errors import ConfigError
from audioset_batch.jobs.job_store import JobStore
from audioset_batch.settings import Settings
from cli.common import main, note, open_jobs

if TYPE_CHECKING:
    from dashboard.factory import Dashboard


def start_dashboard(settings: Settings, jobs: JobStore, host: str | None = None, port: int | None = None) -> Dashboard:
    """Start the dashboard on a thread and say where it is; the caller stops it (``.server.stop()``)."""
    from dashboard.factory import make_dashboard

    jobs.list_jobs(1)  # an unreachable job store is one line now, not an error on every page later
    board = make_dashboard(settings, jobs, host, port)
    board.server.start()
    if board.generated:
        note(f"dashboard: {board.login_url}  (open it to log in; the token is new at each start)")
    else:
        note(f"dashboard: {board.login_url}  (log in with AUDIOSET_UI_TOKEN)")
    return board


@main.command()
@click.option("--host", default=None, help="Address to bind (default: AUDIOSET_UI_HOST, 127.0.0.1).")
@click.option("--port", type=click.IntRange(0, 65535), default=None, help="Port (default: AUDIOSET_UI_PORT, 8765).")
@click.pass_obj
def ui(settings: Settings, host: str | None, port: int | None) -> None:
    """Serve the web dashboard: jobs with progress, their files and why each failed, retry and cancel, each
    file's top labels, search by label, and plots. Ctrl-C stops it."""
    try:
        board = start_dashboard(settings, open_jobs(settings), host, port)
    except OSError as exc:
        where = f"{host or settings.ui_host}:{settings.ui_port if port is None else port}"
        raise ConfigError(f"the dashboard cannot listen on {where}: {exc.strerror or exc}; try --port 0") from exc
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    while not stop.wait(0.5):
        pass
    board.server.stop()
    note("dashboard stopped")
