"""Running the service: ``worker``, ``watch``, ``listen`` and the embedded ``run``."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from audioset_batch.settings import Settings
from cli.common import LocalPath, fail, main, note, open_jobs

if TYPE_CHECKING:
    from dashboard.factory import Dashboard

# --- running the service ----------------------------------------------------------------------


@main.command(context_settings={"ignore_unknown_options": True})
@click.option(
    "-c",
    "--concurrency",
    type=int,
    default=None,
    help="Worker processes (default: AUDIOSET_WORKER_CONCURRENCY or one per core).",
)
@click.option("-Q", "--queues", default=None, help="Queues to consume (default: AUDIOSET_QUEUE).")
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
@click.pass_obj
def worker(settings: Settings, concurrency: int | None, queues: str | None, celery_args: tuple[str, ...]) -> None:
    """Start a Celery worker (extra arguments go to `celery worker`)."""
    from worker.app import get_app
    from worker.config import worker_argv

    argv = worker_argv(
        concurrency or settings.effective_concurrency,
        queues or settings.queue,
        settings.log_level,
        *celery_args,
        quiet=settings.log_format == "json",
    )
    get_app().worker_main(argv)


@main.command()
@click.argument("url")
@click.option(
    "--interval", type=float, default=None, help="Seconds between listings (default: AUDIOSET_WATCH_INTERVAL)."
)
@click.option("--once", is_flag=True, help="List once, enqueue what is new, and exit.")
@click.pass_obj
def watch(settings: Settings, url: str, interval: float | None, once: bool) -> None:
    """Poll URL (a bucket prefix, or a folder under AUDIOSET_LOCAL_ROOT) and enqueue each new or changed
    HDF5 object exactly once. A bucket that does not exist is an error; with --once, so is one with no HDF5."""
    import signal
    import threading

    from audioset_batch.storage.locations import list_inputs, queue_url
    from producers.watcher import Watcher
    from worker.app import make_app

    prefix = queue_url(url, settings)
    present = next(iter(list_inputs(prefix, settings)), None)  # a missing bucket stops here, before any job
    if present is None and once:
        fail(f"{url}: no .h5 or .hdf5 file there; nothing was enqueued")
    watcher = Watcher(str(prefix), settings, make_app(settings), open_jobs(settings))
    note(f"job {watcher.job}")
    if once:
        note(f"{watcher.poll_once()} file(s) enqueued")
        return
    if present is None:
        note(f"no .h5 or .hdf5 file in {prefix} yet; waiting for new ones")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    watcher.run(stop, interval)


@main.command()
@click.option("--redis-list", default=None, help="Consume notifications from this Redis list (MinIO's Redis target).")
@click.option("--redis-url", default=None, help="Redis holding the list (default: AUDIOSET_BROKER_URL).")
@click.option("--http", "http_address", default=None, help="Serve an HTTP endpoint on HOST:PORT for webhooks.")
@click.option(
    "--replay-failed",
    is_flag=True,
    help="Move the payloads set aside in <KEY>:failed back onto --redis-list KEY, then exit.",
)
@click.option("--prefix", default="", help="Only keys starting with this prefix.")
@click.option(
    "--suffix", "suffixes", multiple=True, help="Only keys ending with this (repeatable; default .h5, .hdf5)."
)
@click.option(
    "--event",
    "event_types",
    multiple=True,
    help="Only these event types enqueue (prefix match; default ObjectCreated and Object:Write). "
    "Removal events (ObjectRemoved, Object:Delete) always drop the object's finished items from the job.",
)
@click.option(
    "--scheme",
    type=click.Choice(["cos", "s3"]),
    default="cos",
    show_default=True,
    help="URL scheme of the objects the events name.",
)
@click.pass_obj
def listen(
    settings: Settings,
    redis_list: str | None,
    redis_url: str | None,
    http_address: str | None,
    replay_failed: bool,
    prefix: str,
    suffixes: tuple[str, ...],
    event_types: tuple[str, ...],
    scheme: str,
) -> None:
    """Enqueue the objects named by bucket notifications (Redis list and/or HTTP)."""
    from audioset_batch.jobs.factory import open_job_store
    from audioset_batch.storage.object_store import HDF5_SUFFIXES
    from producers.listener import Listener, serve_until_stopped
    from producers.notifications import CREATED_TYPES, EventFilter
    from worker.app import make_app

    if not redis_list and not http_address:
        raise click.UsageError("give --redis-list KEY, --http HOST:PORT, or both")
    if replay_failed:
        if not redis_list:
            raise click.UsageError("--replay-failed needs --redis-list KEY")
        moved = Listener.replay_failed(redis_url or settings.broker_url, redis_list)
        note(f"{moved} payload(s) moved from {redis_list}:failed back to {redis_list}")
        return
    http = None
    if http_address:
        host, _, port = http_address.rpartition(":")
        if not port.isdigit():
            raise click.BadParameter(f"{http_address!r}: give HOST:PORT, e.g. 127.0.0.1:8080", param_hint="--http")
        http = (host or "0.0.0.0", int(port))
    event_filter = EventFilter(
        prefix=prefix, suffixes=suffixes or HDF5_SUFFIXES, event_types=event_types or CREATED_TYPES
    )
    listener = Listener(
        settings, make_app(settings), open_job_store(settings.effective_state_url), event_filter, scheme
    )
    serve_until_stopped(listener, http=http, redis_list=redis_list, redis_url=redis_url, announce=print_err)


def print_err(line: str) -> None:
    note(line)


@main.command()
@click.option(
    "--root",
    type=LocalPath(file_okay=False, path_type=Path),
    default=None,
    help="Folder holding the incoming/ and results/ buckets (default: AUDIOSET_LOCAL_ROOT).",
)
@click.option("--demo", is_flag=True, help="Drop a sample file in, print its top labels, then exit.")
@click.option("--concurrency", type=int, default=1, show_default=True, help="Worker processes.")
@click.option("--timeout", type=float, default=300, show_default=True, help="Seconds --demo waits for its result.")
@click.option("--no-ui", is_flag=True, help="Do not start the web dashboard.")
@click.pass_obj
def run(settings: Settings, root: Path | None, demo: bool, concurrency: int, timeout: float, no_ui: bool) -> None:
    """Run the whole service locally: folder buckets, embedded broker, a worker, a watcher and the dashboard."""
    from audioset_batch.storage.local_store import LocalStore
    from cli.demo import write_sample
    from cli.embedded import INCOMING, RESULTS, EmbeddedService

    service = EmbeddedService(root or settings.local_root, concurrency=concurrency)
    note(f"incoming: {service.root / INCOMING}")
    note(f"results:  {service.root / RESULTS / service.settings.results_prefix}")
    worker_log = service.root / ".logs" / "worker.log" if demo else None
    if not demo:  # --demo stops on Ctrl-C as any command does
        service.catch_stop_signals()
    service.start(log_file=worker_log, say=note)
    try:
        if not demo:
            board = None if no_ui else _run_dashboard(service.settings)
            note("copy .h5 files into the incoming folder; Ctrl-C stops")
            try:
                code = service.serve_forever(say=note)
            finally:
                if board is not None:
                    board.server.stop()
            sys.exit(code)
        key = "demo/sample.h5"
        origin = write_sample(service.root / INCOMING / key)
        etag = LocalStore(service.root).stat(INCOMING, key).etag
        note(f"wrote {INCOMING}/{key}: {origin}; waiting for the worker…")
        note(f"worker log: {worker_log}")
        record = service.wait_for_result(key, etag, timeout)
        if "error" in record:
            fail(f"{record['error']}: {record['message']}")
        _print_top_labels(service.root / RESULTS / record["result"].split("/", 1)[1], limit=5)
    finally:
        service.shutdown()


def _run_dashboard(settings: Settings) -> Dashboard:
    """The run's dashboard over its own state; on another port when AUDIOSET_UI_PORT is taken."""
    from audioset_batch.jobs.factory import open_job_store
    from cli.dashboard import start_dashboard

    jobs = open_job_store(settings.effective_state_url)
    try:
        return start_dashboard(settings, jobs)
    except OSError:
        return start_dashboard(settings, jobs, port=0)


def _print_top_labels(jsonl: Path, limit: int) -> None:
    with jsonl.open("rb") as fh:
        for number, line in enumerate(fh):
            if number >= limit:
                break
            record = json.loads(line)
            labels = ", ".join(f"{label['name']} {label['score']:.2f}" for label in record["labels"][:3])
            click.echo(f"clip {record['index']} ({record['video_id'] or '-'}): {labels}")
    click.echo(f"results: {jsonl}")
