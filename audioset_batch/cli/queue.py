"""Queue commands: ``enqueue`` and the ``jobs`` group (status, list, prune, delete)."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import click

from audioset_batch.cli.common import cli_settings, friendly_errors, main
from audioset_batch.jobs import UnknownJobError

# --- queue -------------------------------------------------------------------------------------


def _wait(jobs: Any, job: str, as_json: bool) -> int:
    from tqdm import tqdm

    status = jobs.status(job)
    bar = None if as_json else tqdm(total=status.total, desc=f"job {job}", unit="file", file=sys.stderr)
    while True:
        status = jobs.status(job)
        if bar is not None:
            bar.total = status.total
            bar.n = status.done + status.failed
            bar.set_postfix(scored=status.scored, skipped=status.skipped, failed=status.failed, refresh=False)
            bar.refresh()
        if status.finished:
            break
        time.sleep(0.5)
    if bar is not None:
        bar.close()
    _print_status(status, as_json)
    return 1 if status.failed else 0


def _print_status(status: Any, as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(status.to_json()))
    else:
        click.echo(
            f"{status.id}  {status.name}  total={status.total} scored={status.scored} "
            f"skipped={status.skipped} failed={status.failed} pending={status.pending}"
            f"{'  (finished)' if status.finished else ''}"
        )


@main.command()
@click.argument("urls", nargs=-1, required=True)
@click.option("--job", "job_name", default=None, help="A name for the job (shown in `audioset jobs list`).")
@click.option("--force", is_flag=True, help="Score again even where results for this ETag and model exist.")
@click.option("--wait", is_flag=True, help="Wait for the job to finish; exit 1 if any file failed.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@friendly_errors
def enqueue(urls: tuple[str, ...], job_name: str | None, force: bool, wait: bool, as_json: bool) -> None:
    """Enqueue each URL: an object, or a prefix whose .h5/.hdf5 objects are all enqueued."""
    from audioset_batch.jobs import open_job_store
    from producers.enqueue import enqueue as do_enqueue
    from worker.app import make_app

    settings = cli_settings()
    jobs = open_job_store(settings.effective_state_url)
    result = do_enqueue(make_app(settings), jobs, list(urls), settings, job_name=job_name, force=force)
    if as_json:
        click.echo(json.dumps({"job": result.job, "objects": result.objects, "sent": result.sent}))
    else:
        click.echo(result.job)
        click.echo(f"{result.sent} file(s) enqueued", err=True)
    if wait:
        sys.exit(_wait(jobs, result.job, as_json))


@main.group()
def jobs() -> None:
    """Inspect jobs (counts of scored, skipped, failed and pending files) and remove old ones."""


@jobs.command("status")
@click.argument("job")
@click.option("--wait", is_flag=True, help="Wait until nothing is pending; exit 1 if any file failed.")
@click.option("--failed", "show_failed", is_flag=True, help="Also list the failed files.")
@click.option("--json", "as_json", is_flag=True)
@friendly_errors
def jobs_status(job: str, wait: bool, show_failed: bool, as_json: bool) -> None:
    """Show a job's counts of scored, skipped, failed and pending files."""
    from audioset_batch.jobs import open_job_store

    jobs_store = open_job_store(cli_settings().effective_state_url)
    status = jobs_store.status(job)
    code = _wait(jobs_store, job, as_json) if wait else 0
    if not wait:
        _print_status(status, as_json)
    if show_failed:
        for item in sorted(jobs_store.items(job, "failed")):
            click.echo(f"failed: {item}")
    sys.exit(code)


@jobs.command("list")
@click.option("--limit", default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@friendly_errors
def jobs_list(limit: int, as_json: bool) -> None:
    """List the newest jobs and the producers' counters."""
    from audioset_batch.jobs import open_job_store

    store = open_job_store(cli_settings().effective_state_url)
    statuses = store.list_jobs(limit)
    if as_json:
        click.echo(json.dumps({"jobs": [s.to_json() for s in statuses], "counters": store.counters()}))
        return
    for status in statuses:
        _print_status(status, False)
    counters = store.counters()
    if counters:
        click.echo("producer counters: " + ", ".join(f"{k}={v}" for k, v in sorted(counters.items())))


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def _duration(value: str) -> float:
    """``90``, ``90s``, ``15m``, ``12h``, ``30d`` or ``2w`` as seconds."""
    text = value.strip().lower()
    unit = _DURATION_UNITS.get(text[-1:], 0)
    try:
        number = float(text[:-1] if unit else text)
    except ValueError:
        number = -1.0
    if not number >= 0:  # also refuses nan
        raise click.BadParameter(f"{value!r} is not a duration like 90s, 15m, 12h, 30d or 2w")
    return number * (unit or 1)


@jobs.command("prune")
@click.option(
    "--older-than",
    default="30d",
    show_default=True,
    help="Remove jobs created at least this long ago (90s, 15m, 12h, 30d, 2w).",
)
@click.option("--include-unfinished", is_flag=True, help="Also remove jobs that still have pending files.")
@click.option("--dry-run", is_flag=True, help="Only list what would be removed.")
@click.option("--json", "as_json", is_flag=True)
@friendly_errors
def jobs_prune(older_than: str, include_unfinished: bool, dry_run: bool, as_json: bool) -> None:
    """Remove old finished jobs from the job store (never a watcher's or listener's job).

    Results in the bucket are untouched; only the job records (per-file statuses) go.
    """
    from audioset_batch.jobs import open_job_store, prunable_jobs

    store = open_job_store(cli_settings().effective_state_url)
    doomed = prunable_jobs(store.list_jobs(None), _duration(older_than), time.time(), include_unfinished)
    removed = [s.id for s in doomed if dry_run or store.delete_job(s.id)]
    if as_json:
        click.echo(json.dumps({"removed": removed, "dry_run": dry_run}))
        return
    for job_id in removed:
        click.echo(job_id)
    verb = "would remove" if dry_run else "removed"
    click.echo(f"{verb} {len(removed)} job(s)", err=True)


@jobs.command("delete")
@click.argument("job_ids", nargs=-1, required=True)
@friendly_errors
def jobs_delete(job_ids: tuple[str, ...]) -> None:
    """Remove jobs by id, whatever their state.

    Deleting a watcher's or listener's job (``watch-…``, ``listen-…``) makes it forget what it
    sent: stop the producer first, and expect it to offer every object again (the worker still
    skips versions it has already scored).
    """
    from audioset_batch.jobs import open_job_store

    store = open_job_store(cli_settings().effective_state_url)
    missing = [job_id for job_id in job_ids if not store.delete_job(job_id)]
    for job_id in missing:
        click.echo(f"error: {UnknownJobError(job_id)}", err=True)
    sys.exit(2 if missing else 0)
