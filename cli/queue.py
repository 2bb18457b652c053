"""Queue commands: ``enqueue`` and the ``jobs`` group (status, list, prune, delete)."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import click

from audioset_batch.jobs.job_store import JobStatus, JobStore, UnknownJobError
from audioset_batch.logs import printable
from audioset_batch.settings import Settings
from cli.common import (
    fail,
    json_option,
    local_state,
    local_state_hint,
    main,
    note,
    open_jobs,
    progress_bar,
    quiet_option,
    warn,
)

# --- queue -------------------------------------------------------------------------------------

#: ``--wait`` asks whether any worker consumes the queue once nothing has moved for this long (seconds).
IDLE_BEFORE_ASKING = 5.0
ASK_EVERY = 30.0
#: Exit code of ``--wait`` when ``--timeout`` passes first (as timeout(1)).
TIMED_OUT = 124


def _consumers_hint(settings: Settings) -> str:
    hint = f"start one (`audioset worker`), or check AUDIOSET_QUEUE ({settings.queue!r}) and AUDIOSET_BROKER_URL"
    if local_state(settings) is not None and not settings.broker_url.startswith("filesystem"):
        hint += "; `audioset run` reads only its own folder (copy files into its incoming/ folder instead)"
    return hint


def _wait(
    jobs: JobStore,
    job: str,
    as_json: bool,
    timeout: float | None,
    quiet: bool,
    settings: Settings,
    failed: bool = False,
) -> int:
    """Follow a job until nothing is pending (exit 1 if a file failed) or ``timeout`` passes (exit 124).

    While nothing moves, it asks the broker whether any worker consumes the queue, and says so when none does.
    """
    from celery import Celery

    from worker.app import make_app, queue_consumers

    app: Celery | None = None  # made on first need: most waits never ask

    status = jobs.status(job)
    bar = None if as_json else progress_bar(status.total, f"job {job}", "file", quiet)
    started = last_move = time.monotonic()
    last_ask = -ASK_EVERY
    seen = (status.done, status.failed)
    while True:
        status = jobs.status(job)
        now = time.monotonic()
        if bar is not None:
            bar.total = status.total
            bar.n = status.done + status.failed
            bar.set_postfix(
                clips=status.clips, scored=status.scored, skipped=status.skipped, failed=status.failed, refresh=False
            )
            bar.refresh()
        if status.finished:
            break
        if (status.done, status.failed) != seen:
            seen, last_move = (status.done, status.failed), now
        elif now - last_move >= IDLE_BEFORE_ASKING and now - last_ask >= ASK_EVERY:
            last_ask = now
            app = app or make_app(settings)
            if queue_consumers(app, settings.queue) == []:
                warn(f"no worker consumes queue {settings.queue!r}: {_consumers_hint(settings)}")
        if timeout is not None and now - started >= timeout:
            if bar is not None:
                bar.close()
            _print_status(status, as_json, _failed_items(jobs, job) if failed else None)
            fail(
                f"job {job}: {status.pending} file(s) still pending after {timeout:g}s; the job goes on "
                f"(`audioset jobs status {job} --wait` waits again)",
                TIMED_OUT,
            )
        time.sleep(0.5)
    if bar is not None:
        bar.close()
    return 1 if status.failed else 0


def _print_status(status: JobStatus, as_json: bool, failed: dict[str, dict[str, Any]] | None = None) -> None:
    """The counts line (as it always was), then times, clips and pace; with ``failed``, each failed file and why."""
    if as_json:
        data = status.to_json()
        if failed is not None:
            data["failed_items"] = [{"item": item, **end} for item, end in sorted(failed.items())]
        click.echo(json.dumps(data))
        return
    click.echo(
        f"{status.id}  {status.name}  total={status.total} scored={status.scored} "
        f"skipped={status.skipped} failed={status.failed} pending={status.pending}"
        f"{'  (finished)' if status.finished else ''}"
    )
    data = status.to_json()
    pace = f"{data['clips']} clips in {data['seconds']:.1f} s ({data['clips_per_second']:g} clips/s)"
    when = f"created {data['created_at']}" + (f", finished {data['finished_at']}" if data["finished_at"] else "")
    left = "" if status.finished or data["eta_seconds"] is None else f", about {data['eta_seconds']:.0f} s left"
    click.echo(f"  {when}; {pace}{left}")
    for item, end in sorted((failed or {}).items()):
        reason = f"{end.get('error') or 'failed'}: {end.get('message') or 'no reason recorded'}"
        click.echo(f"failed: {printable(item)}  {reason}")


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: str, bare_seconds: bool = True) -> float:
    """``90s``, ``15m``, ``12h``, ``30d`` or ``2w`` as seconds; a bare number is seconds where ``bare_seconds``."""
    text = value.strip().lower()
    unit = _DURATION_UNITS.get(text[-1:], 0)
    try:
        number = float(text[:-1] if unit else text)
    except ValueError:
        number = -1.0
    if not number >= 0:  # also refuses nan
        raise click.BadParameter(f"{value!r} is not a duration like 90s, 15m, 12h, 30d or 2w")
    if not unit and not bare_seconds:
        raise click.BadParameter(f"{value!r} has no unit; write e.g. {text}d (days), {text}h, {text}m or {text}s")
    return number * (unit or 1)


def _timeout(_ctx: Any, _param: Any, value: str | None) -> float | None:
    return None if value is None else parse_duration(value)


wait_options = [
    click.option(
        "--timeout",
        callback=_timeout,
        default=None,
        help="With --wait: give up after this long (90s, 15m, 2h), exit 124; the job goes on.",
    ),
    quiet_option,
]


def with_wait_options(command: Any) -> Any:
    for option in reversed(wait_options):
        command = option(command)
    return command


@main.command()
@click.argument("urls", nargs=-1, required=True)
@click.option("--job", "job_name", default=None, help="A name for the job; `jobs status NAME` finds it.")
@click.option("--force", is_flag=True, help="Score again even where results for this ETag and model exist.")
@click.option("--wait", is_flag=True, help="Wait for the job to finish; exit 1 if any file failed.")
@with_wait_options
@json_option
@click.pass_obj
def enqueue(
    settings: Settings,
    urls: tuple[str, ...],
    job_name: str | None,
    force: bool,
    wait: bool,
    timeout: float | None,
    quiet: bool,
    as_json: bool,
) -> None:
    """Enqueue each URL: an object, or a prefix or folder whose .h5/.hdf5 files are all enqueued.

    Local paths must lie under AUDIOSET_LOCAL_ROOT (workers read them as file://bucket/key).
    Matching nothing is an error, and leaves no job behind.
    """
    from producers.enqueue import enqueue as do_enqueue
    from worker.app import make_app

    jobs = open_jobs(settings)
    result = do_enqueue(make_app(settings), jobs, list(urls), settings, job_name=job_name, force=force)
    if as_json:
        click.echo(json.dumps({"job": result.job, "objects": result.objects, "sent": result.sent}))
    else:
        click.echo(result.job)
        skipped = result.objects - result.sent
        note(f"{result.sent} file(s) enqueued" + (f" ({skipped} already in the job)" if skipped else ""))
    if wait:
        code = _wait(jobs, result.job, as_json, timeout, quiet, settings)
        _print_status(jobs.status(result.job), as_json)
        sys.exit(code)


@main.group()
def jobs() -> None:
    """Follow, retry and cancel jobs (counts of scored, skipped, failed and pending files), and remove old ones."""


@jobs.command("status")
@click.argument("job")
@click.option("--wait", is_flag=True, help="Wait until nothing is pending; exit 1 if any file failed.")
@with_wait_options
@click.option("--failed", "show_failed", is_flag=True, help="Also list each failed file and why it failed.")
@json_option
@click.pass_obj
def jobs_status(
    settings: Settings, job: str, wait: bool, timeout: float | None, quiet: bool, show_failed: bool, as_json: bool
) -> None:
    """Show a job's counts, times, clips and pace; exit 1 if any file failed. JOB is its id or its name."""
    from audioset_batch.jobs.job_store import find_job

    jobs_store = open_jobs(settings)
    try:
        job = find_job(jobs_store, job)
    except UnknownJobError as exc:
        fail(f"{exc}{local_state_hint(settings)}", 2)
    if wait:
        _wait(jobs_store, job, as_json, timeout, quiet, settings, show_failed)
    status = jobs_store.status(job)
    _print_status(status, as_json, _failed_items(jobs_store, job) if show_failed else None)
    sys.exit(1 if status.failed else 0)


def _failed_items(store: JobStore, job: str) -> dict[str, dict[str, Any]]:
    """Each failed item with how it ended (items failed before reasons were kept get an empty reason)."""
    ends = store.ends(job, "failed")
    return {item: ends.get(item, {}) for item in store.items(job, "failed")}


@jobs.command("retry")
@click.argument("job")
@click.option(
    "--all", "everything", is_flag=True, help="Score every file of the job again, not only the failed ones (--force)."
)
@click.pass_obj
def jobs_retry(settings: Settings, job: str, everything: bool) -> None:
    """Send a job's failed files to the workers again (each exactly once, even if run twice or during the job)."""
    from audioset_batch.jobs.job_store import find_job
    from producers.enqueue import resend
    from worker.app import make_app

    store = open_jobs(settings)
    try:
        job = find_job(store, job)
    except UnknownJobError as exc:
        fail(f"{exc}{local_state_hint(settings)}", 2)
    sent = resend(make_app(settings), store, job, settings, everything)
    what = "file(s)" if everything else "failed file(s)"
    note(f"job {job}: {sent} {what} sent again; follow it with: audioset jobs status {job} --wait")


@jobs.command("cancel")
@click.argument("job")
@click.pass_obj
def jobs_cancel(settings: Settings, job: str) -> None:
    """Cancel a job: its pending files are not scored (workers check each one before they start it)."""
    from audioset_batch.jobs.job_store import find_job

    store = open_jobs(settings)
    try:
        job = find_job(store, job)
    except UnknownJobError as exc:
        fail(f"{exc}{local_state_hint(settings)}", 2)
    cancelled = store.cancel(job)
    note(f"job {job}: {cancelled} pending file(s) cancelled; a file a worker is scoring now finishes and is recorded")


@jobs.command("list")
@click.option("--limit", default=20, show_default=True)
@json_option
@click.pass_obj
def jobs_list(settings: Settings, limit: int, as_json: bool) -> None:
    """List the newest jobs and the producers' counters."""
    from audioset_batch.settings import mask_url

    store = open_jobs(settings)
    statuses = store.list_jobs(limit)
    if not statuses and not as_json:
        note(f"no jobs in {mask_url(settings.effective_state_url)}{local_state_hint(settings)}")
    if as_json:
        click.echo(json.dumps({"jobs": [s.to_json() for s in statuses], "counters": store.counters()}))
        return
    for status in statuses:
        _print_status(status, False)
    counters = store.counters()
    if counters:
        click.echo("producer counters: " + ", ".join(f"{k}={v}" for k, v in sorted(counters.items())))


@jobs.command("prune")
@click.option(
    "--older-than",
    default="30d",
    show_default=True,
    callback=lambda _ctx, _param, value: parse_duration(value, bare_seconds=False),
    help="Remove jobs created at least this long ago (90s, 15m, 12h, 30d, 2w).",
)
@click.option("--include-unfinished", is_flag=True, help="Also remove jobs that still have pending files.")
@click.option("--dry-run", is_flag=True, help="Only list what would be removed.")
@json_option
@click.pass_obj
def jobs_prune(settings: Settings, older_than: float, include_unfinished: bool, dry_run: bool, as_json: bool) -> None:
    """Remove old finished jobs from the job store (never a watcher's or listener's job).

    Results in the bucket are untouched; only the job records (per-file statuses) go.
    """
    from audioset_batch.jobs.job_store import prunable_jobs

    store = open_jobs(settings)
    doomed = prunable_jobs(store.list_jobs(None), older_than, time.time(), include_unfinished)
    removed = [s.id for s in doomed if dry_run or store.delete_job(s.id)]
    if as_json:
        click.echo(json.dumps({"removed": removed, "dry_run": dry_run}))
        return
    for job_id in removed:
        click.echo(job_id)
    verb = "would remove" if dry_run else "removed"
    note(f"{verb} {len(removed)} job(s)")


@jobs.command("delete")
@click.argument("job_ids", nargs=-1, required=True)
@click.pass_obj
def jobs_delete(settings: Settings, job_ids: tuple[str, ...]) -> None:
    """Remove jobs by id or name, whatever their state.

    Deleting a watcher's or listener's job (``watch-…``, ``listen-…``) makes it forget what it
    sent: stop the producer first, and expect it to offer every object again (the worker still
    skips versions it has already scored).
    """
    from audioset_batch.jobs.job_store import find_job

    store = open_jobs(settings)
    missing = 0
    for ref in job_ids:
        try:
            store.delete_job(find_job(store, ref))
        except UnknownJobError as exc:
            missing += 1
            click.echo(f"error: {exc}", err=True)
    sys.exit(2 if missing else 0)
