"""The ``audioset`` command line: a thin shell over the library."""

from __future__ import annotations

import csv
import json
import logging
import sys
import tempfile
import time
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import IO, Any, TypeVar

import click

from audioset_batch.errors import AudiosetError, ConfigError
from audioset_batch.jobs import UnknownJobError
from audioset_batch.settings import Settings, get_settings
from model.artifact import ArtifactError
from model.inference import PrecisionUnavailableError

F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger("audioset.cli")


def _settings() -> Settings:
    from audioset_batch.logs import configure_logging

    settings = get_settings()
    configure_logging(settings)
    return settings


def friendly_errors(fn: F) -> F:
    """Turn our exceptions into one clear line on stderr and a non-zero exit code."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (ConfigError, UnknownJobError) as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        except (AudiosetError, KeyError, ArtifactError, PrecisionUnavailableError) as exc:
            click.echo(f"error: {type(exc).__name__}: {exc}", err=True)
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="audioset-batch")
def main() -> None:
    """Score AudioSet embedding files into per-clip predictions (JSON Lines)."""
    from audioset_batch.hdf5_reader import pin_external_prefixes

    pin_external_prefixes()


# --- scoring -----------------------------------------------------------------------------------


@main.command()
@click.argument("source")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, allow_dash=True),
    default="-",
    show_default=True,
    help="Where the JSON Lines go ('-' for stdout).",
)
@click.option(
    "--scores",
    type=click.Choice(["top", "full"]),
    default=None,
    help="'full' adds every class score per clip (default: AUDIOSET_FULL_SCORES).",
)
@click.option("--top-k", type=click.IntRange(min=1), default=None, help="Labels per clip (default: AUDIOSET_TOP_K).")
@click.option(
    "--model",
    "model_path",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    default=None,
    help="Model artifact directory (default: the shipped model).",
)
@click.option(
    "--precision",
    type=click.Choice(["float32", "bfloat16", "int8", "auto"]),
    default=None,
    help="Inference precision (default: AUDIOSET_PRECISION).",
)
@friendly_errors
def score(
    source: str, output: str, scores: str | None, top_k: int | None, model_path: Path | None, precision: str | None
) -> None:
    """Score one FILE or URL in-process, with no queue; writes the worker's JSONL format."""
    from audioset_batch.object_store import ObjectURL, store_for
    from audioset_batch.pipeline import ObjectScorer

    settings = _settings()
    scorer = ObjectScorer.from_settings(
        settings,
        model_path=model_path,
        precision=precision,
        top_k=top_k,
        full_scores=(scores == "full") if scores else None,
    )

    def run(path: Path, name: str, out: IO[bytes]) -> None:
        result = scorer.score_local(path, out, name)
        summary: dict[str, Any] = {
            "source": name,
            "clips": result.clips,
            "model": scorer.model,
            "seconds": round(result.seconds, 3),
            "metrics": result.metrics,
        }
        if result.notes:
            summary["notes"] = result.notes
        click.echo(json.dumps(summary), err=True)

    def with_output(path: Path, name: str) -> None:
        if output == "-":
            run(path, name, sys.stdout.buffer)
            sys.stdout.flush()
        else:
            target = Path(output)
            tmp = target.with_name(f".{target.name}.tmp")
            with tmp.open("wb") as fh:
                run(path, name, fh)
            tmp.replace(target)

    if "://" in source:
        url = ObjectURL.parse(source)
        with tempfile.NamedTemporaryFile(suffix=".h5") as tmp:
            store_for(url.scheme, settings).download(url.bucket, url.key, tmp)
            tmp.flush()
            with_output(Path(tmp.name), f"{url.bucket}/{url.key}")
    else:
        path = Path(source)
        if not path.is_file():
            raise click.BadParameter(f"{source}: no such file", param_hint="SOURCE")
        with_output(path, str(path))


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

    settings = _settings()
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

    jobs_store = open_job_store(_settings().effective_state_url)
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

    store = open_job_store(_settings().effective_state_url)
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
    """Remove old finished jobs from the state store (never a watcher's or listener's job).

    Results in the bucket are untouched; only the job records (per-file statuses) go.
    """
    from audioset_batch.jobs import open_job_store, prunable_jobs

    store = open_job_store(_settings().effective_state_url)
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

    store = open_job_store(_settings().effective_state_url)
    missing = [job_id for job_id in job_ids if not store.delete_job(job_id)]
    for job_id in missing:
        click.echo(f"error: {UnknownJobError(job_id)}", err=True)
    sys.exit(2 if missing else 0)


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
@friendly_errors
def worker(concurrency: int | None, queues: str | None, celery_args: tuple[str, ...]) -> None:
    """Start a Celery worker (extra arguments go to `celery worker`)."""
    from worker.app import get_app
    from worker.config import worker_argv

    settings = _settings()
    argv = worker_argv(
        concurrency or settings.effective_concurrency, queues or settings.queue, settings.log_level, *celery_args
    )
    get_app().worker_main(argv)


@main.command()
@click.argument("url")
@click.option(
    "--interval", type=float, default=None, help="Seconds between listings (default: AUDIOSET_WATCH_INTERVAL)."
)
@click.option("--once", is_flag=True, help="List once, enqueue what is new, and exit.")
@friendly_errors
def watch(url: str, interval: float | None, once: bool) -> None:
    """Poll URL (a bucket prefix) and enqueue each new or changed HDF5 object exactly once."""
    import signal
    import threading

    from audioset_batch.jobs import open_job_store
    from producers.watcher import Watcher
    from worker.app import make_app

    settings = _settings()
    watcher = Watcher(url, settings, make_app(settings), open_job_store(settings.effective_state_url))
    click.echo(f"job {watcher.job}", err=True)
    if once:
        click.echo(f"{watcher.poll_once()} file(s) enqueued", err=True)
        return
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
@friendly_errors
def listen(
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
    import signal
    import threading

    from audioset_batch.jobs import open_job_store
    from producers.http_endpoint import EndpointLimits
    from producers.listener import Listener
    from producers.notifications import CREATED_TYPES, HDF5_SUFFIXES, EventFilter
    from worker.app import make_app

    if not redis_list and not http_address:
        raise click.UsageError("give --redis-list KEY, --http HOST:PORT, or both")
    settings = _settings()
    if replay_failed:
        if not redis_list:
            raise click.UsageError("--replay-failed needs --redis-list KEY")
        moved = Listener.replay_failed(redis_url or settings.broker_url, redis_list)
        click.echo(f"{moved} payload(s) moved from {redis_list}:failed back to {redis_list}", err=True)
        return
    event_filter = EventFilter(
        prefix=prefix, suffixes=suffixes or HDF5_SUFFIXES, event_types=event_types or CREATED_TYPES
    )
    jobs_store = open_job_store(settings.effective_state_url)
    listener = Listener(settings, make_app(settings), jobs_store, event_filter, scheme)
    stop = threading.Event()
    threads: list[threading.Thread] = []
    server = None
    if http_address:
        host, _, port = http_address.rpartition(":")
        limits = EndpointLimits(
            max_connections=settings.listen_max_connections, request_timeout=settings.listen_timeout
        )
        server = listener.http_server(host or "0.0.0.0", int(port), limits)
        threads.append(threading.Thread(target=server.serve_forever, name="http", daemon=True))
        click.echo(f"listening for HTTP notifications on {host or '0.0.0.0'}:{server.server_port}", err=True)
    if redis_list:
        threads.append(
            threading.Thread(
                target=listener.run_redis_list,
                name="redis-list",
                daemon=True,
                args=(redis_url or settings.broker_url, redis_list, stop),
            )
        )
        click.echo(f"listening on Redis list {redis_list}", err=True)
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    for thread in threads:
        thread.start()
    stop.wait()
    if server is not None:
        server.shutdown()
    for thread in threads:
        thread.join(timeout=5)


@main.command()
@click.option(
    "--root",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder holding the incoming/ and results/ buckets (default: AUDIOSET_LOCAL_ROOT).",
)
@click.option("--demo", is_flag=True, help="Drop a sample file in, print its top labels, then exit.")
@click.option("--concurrency", type=int, default=1, show_default=True, help="Worker processes.")
@click.option("--timeout", type=float, default=300, show_default=True, help="Seconds --demo waits for its result.")
@friendly_errors
def run(root: Path | None, demo: bool, concurrency: int, timeout: float) -> None:
    """Run the whole service locally: folder buckets, embedded broker, a worker and a watcher."""
    from audioset_batch.demo import write_sample
    from audioset_batch.embedded import INCOMING, RESULTS, EmbeddedService
    from audioset_batch.object_store import LocalStore

    settings = _settings()
    service = EmbeddedService(root or settings.local_root, concurrency=concurrency)
    click.echo(
        f"incoming: {service.root / INCOMING}\nresults:  {service.root / RESULTS / service.settings.results_prefix}",
        err=True,
    )
    worker_log = service.root / ".logs" / "worker.log" if demo else None
    service.start(log_file=worker_log)
    try:
        if not demo:
            click.echo("copy .h5 files into the incoming folder; Ctrl-C stops", err=True)
            sys.exit(service.serve_forever())
        key = "demo/sample.h5"
        origin = write_sample(service.root / INCOMING / key)
        etag = LocalStore(service.root).stat(INCOMING, key).etag
        click.echo(f"wrote {INCOMING}/{key}: {origin}; waiting for the worker…", err=True)
        click.echo(f"worker log: {worker_log}", err=True)
        record = service.wait_for_result(key, etag, timeout)
        if "error" in record:
            click.echo(f"error: {record['error']}: {record['message']}", err=True)
            sys.exit(1)
        _print_top_labels(service.root / RESULTS / record["result"].split("/", 1)[1], limit=5)
    finally:
        service.shutdown()


def _print_top_labels(jsonl: Path, limit: int) -> None:
    with jsonl.open("rb") as fh:
        for number, line in enumerate(fh):
            if number >= limit:
                break
            record = json.loads(line)
            labels = ", ".join(f"{label['name']} {label['score']:.2f}" for label in record["labels"][:3])
            click.echo(f"clip {record['index']} ({record['video_id'] or '-'}): {labels}")
    click.echo(f"results: {jsonl}")


@main.command()
@click.argument("label")
@click.option(
    "--results",
    "results_url",
    required=True,
    help="Results prefix to search, e.g. cos://results/predictions/ or file://results/predictions/.",
)
@click.option("--min-score", type=click.FloatRange(0, 1), default=0.5, show_default=True)
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per hit.")
@click.option(
    "--model",
    "model_path",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    default=None,
    help="Artifact whose classes the results use (default: AUDIOSET_MODEL_PATH).",
)
@friendly_errors
def search(label: str, results_url: str, min_score: float, limit: int, as_json: bool, model_path: Path | None) -> None:
    """Find the clips where LABEL (display name or mid) scored at least --min-score, best first."""
    from audioset_batch.object_store import ObjectURL, store_for
    from audioset_batch.search import resolve_label, result_records, search_records
    from model.artifact import read_manifest

    settings = _settings()
    classes = read_manifest(model_path or settings.model_path).classes
    target = resolve_label(label, classes)
    url = ObjectURL.parse(results_url, settings.results_bucket)
    hits = search_records(result_records(store_for(url.scheme, settings), url), target, min_score, limit)
    for hit in hits:
        if as_json:
            click.echo(json.dumps({"label": target.name, "mid": target.mid, **hit.to_json()}))
        else:
            where = f"  {hit.youtube_url}" if hit.youtube_url else ""
            click.echo(f"{hit.score:.3f}  {hit.source} #{hit.index}{where}")
    if not hits and not as_json:
        click.echo(f"no clip with {target.name} >= {min_score}", err=True)


@main.command()
@click.option(
    "--store",
    "scheme",
    type=click.Choice(["auto", "cos", "file"]),
    default="auto",
    show_default=True,
    help="Which object store to check; auto = COS when AUDIOSET_COS_ENDPOINT is set, else the local folders.",
)
@friendly_errors
def doctor(scheme: str) -> None:
    """Check broker, state store, object store, buckets, results write access and the model."""
    from audioset_batch.doctor import run_checks

    settings = _settings()
    if scheme == "auto":
        scheme = "cos" if settings.cos_endpoint else "file"
    checks = run_checks(settings, scheme)
    for check in checks:
        click.echo(f"{'PASS' if check.ok else 'FAIL'}  {check.name}: {check.detail}")
        if not check.ok and check.hint:
            click.echo(f"      fix: {check.hint}")
    failed = sum(not c.ok for c in checks)
    click.echo(f"{len(checks) - failed} of {len(checks)} checks passed")
    sys.exit(1 if failed else 0)


@main.command("config")
@click.option("--json", "as_json", is_flag=True)
@friendly_errors
def show_config(as_json: bool) -> None:
    """Print the effective settings (secrets masked) and exit non-zero if they are invalid."""
    settings = get_settings()
    values = {
        f"AUDIOSET_{name.upper()}": ("***" if "Secret" in type(value).__name__ else value) for name, value in settings
    }
    if as_json:
        click.echo(json.dumps(values, default=str, indent=2))
    else:
        for name, value in values.items():
            click.echo(f"{name}={'' if value is None else value}")


# --- training and evaluation -----------------------------------------------------------------


@main.command()
@click.argument("data", nargs=-1)
@click.option(
    "--submit",
    "spec_path",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="Queue the run described by this YAML file on the `training` queue instead of training here.",
)
@click.option(
    "--labels",
    "labels_path",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="Class list CSV (index,mid,display_name); default: the shipped model's 527 AudioSet classes.",
)
@click.option(
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Run folder: checkpoints, and the artifact in <output>/model. Re-run to resume.",
)
@click.option(
    "--validation",
    "validation_data",
    multiple=True,
    help="Labelled HDF5 file(s) (paths or URLs) to select checkpoints on, instead of holding out a split: "
    "every clip of DATA is then trained on.",
)
@click.option("--architecture", default="decision_level_multi_attention", show_default=True)
@click.option("--iterations", type=click.IntRange(min=1), default=4000, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=500, show_default=True)
@click.option("--learning-rate", type=float, default=1e-3, show_default=True)
@click.option(
    "--weight-decay",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Decoupled weight decay (AdamW): each step shrinks every weight by learning-rate x this; 0 = off.",
)
@click.option("--dropout", type=click.FloatRange(0, 1, max_open=True), default=0.5, show_default=True)
@click.option(
    "--hidden-units", type=click.IntRange(min=1), default=1024, show_default=True, help="Width of each branch."
)
@click.option(
    "--branches",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Independent copies trained side by side and served as their mean (an ensemble in one model).",
)
@click.option(
    "--ema-decay",
    type=click.FloatRange(0, 1, max_open=True),
    default=0.0,
    show_default=True,
    help="Evaluate and keep an exponential moving average of the weights (e.g. 0.999); 0 = off.",
)
@click.option(
    "--teacher",
    "teachers",
    multiple=True,
    help="Distil from this model artifact (repeat for an ensemble): their mean prediction is a soft target.",
)
@click.option(
    "--distill-weight",
    type=click.FloatRange(0, 1),
    default=0.5,
    show_default=True,
    help="Weight of the soft targets (--teacher or --cross-fit) against the labels.",
)
@click.option(
    "--cross-fit",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Train K fold models first; each clip's out-of-fold prediction becomes its soft target. 0 = off.",
)
@click.option(
    "--fold-hidden-units",
    type=click.IntRange(min=1),
    default=None,
    help="Width of the --cross-fit fold models (default: --hidden-units): a wide model can learn from narrower folds.",
)
@click.option(
    "--mixup",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Mixup on embeddings with Beta(ALPHA, ALPHA) weights (e.g. 0.3); 0 = off.",
)
@click.option(
    "--frame-mix",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="Splice clips: up to this share of each clip's frames come from another clip in the batch; 0 = off.",
)
@click.option(
    "--frame-mix-targets",
    type=click.Choice(["share", "union"]),
    default="share",
    show_default=True,
    help="Targets of a spliced clip: blended by frame share, or the union of both label sets.",
)
@click.option(
    "--label-smoothing",
    type=click.FloatRange(0, 1, max_open=True),
    default=0.0,
    show_default=True,
    help="Pull the 0/1 targets towards 0.5 by this amount (e.g. 0.1); 0 = off.",
)
@click.option(
    "--lr-schedule",
    type=click.Choice(["constant", "cosine"]),
    default="constant",
    show_default=True,
    help="cosine: decay the learning rate to 1% of --learning-rate over --iterations.",
)
@click.option("--sampling", type=click.Choice(["balanced", "shuffle"]), default="balanced", show_default=True)
@click.option(
    "--precision",
    type=click.Choice(["float32", "bfloat16"]),
    default="float32",
    show_default=True,
    help="Training arithmetic. bfloat16: mixed precision (float32 weights), about 1.5x faster on CPUs with "
    "avx512_bf16/AMX; validation and the artifact stay float32.",
)
@click.option(
    "--validation-fraction", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.1, show_default=True
)
@click.option("--eval-every", type=click.IntRange(min=1), default=250, show_default=True)
@click.option(
    "--patience",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Stop after this many evaluations in a row without a better validation mAP; 0 = run all iterations.",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--split-seed",
    type=int,
    default=None,
    help="Seed of the validation hold-out (default: --seed). Keep it fixed to compare runs or distil between them.",
)
@click.option("--name", default="audioset-model", show_default=True)
@click.option("--version", "model_version", default="1", show_default=True)
@friendly_errors
def train(
    data: tuple[str, ...],
    spec_path: Path | None,
    labels_path: Path | None,
    output: Path | None,
    validation_data: tuple[str, ...],
    architecture: str,
    iterations: int,
    batch_size: int,
    learning_rate: float,
    weight_decay: float,
    dropout: float,
    hidden_units: int,
    branches: int,
    ema_decay: float,
    teachers: tuple[str, ...],
    distill_weight: float,
    cross_fit: int,
    fold_hidden_units: int | None,
    mixup: float,
    frame_mix: float,
    frame_mix_targets: str,
    label_smoothing: float,
    lr_schedule: str,
    sampling: str,
    precision: str,
    validation_fraction: float,
    eval_every: int,
    patience: int,
    seed: int,
    split_seed: int | None,
    name: str,
    model_version: str,
) -> None:
    """Train a model on labelled HDF5 files (paths or bucket URLs), or queue a run with --submit."""
    settings = _settings()
    if spec_path is not None:
        from audioset_batch.jobs import open_job_store
        from audioset_batch.training_runs import load_spec, submit
        from worker.app import make_app
        from worker.config import TRAINING_QUEUE

        run_id = submit(
            load_spec(spec_path), make_app(settings), open_job_store(settings.effective_state_url), TRAINING_QUEUE
        )
        click.echo(run_id)
        click.echo(f"queued on '{TRAINING_QUEUE}'; follow it with: audioset training monitor {run_id}", err=True)
        return
    if not data or output is None:
        raise click.UsageError("give DATA files and --output (or --submit SPEC.yml)")
    from tqdm import tqdm

    from audioset_batch.datasets import load_dataset
    from model.architectures import ARCHITECTURES
    from model.artifact import read_manifest
    from model.labels import load_labels
    from model.training import Progress, TrainConfig
    from model.training import train as run_training

    if architecture not in ARCHITECTURES:
        raise click.BadParameter(f"choose one of {', '.join(ARCHITECTURES)}", param_hint="--architecture")
    if settings.tf_threads:
        from worker.runtime import configure_tensorflow

        configure_tensorflow(settings.tf_threads)
    labels = load_labels(labels_path) if labels_path else read_manifest(settings.model_path).classes
    dataset = load_dataset(list(data), settings)
    held_out = load_dataset(list(validation_data), settings) if validation_data else None
    config = TrainConfig(
        architecture=architecture,
        batch_size=batch_size,
        learning_rate=learning_rate,
        weight_decay=weight_decay,
        iterations=iterations,
        dropout=dropout,
        hidden_units=hidden_units,
        branches=branches,
        ema_decay=ema_decay,
        teachers=list(teachers),
        distill_weight=distill_weight,
        cross_fit=cross_fit,
        fold_hidden_units=fold_hidden_units,
        mixup=mixup,
        frame_mix=frame_mix,
        frame_mix_targets=frame_mix_targets,
        label_smoothing=label_smoothing,
        lr_schedule=lr_schedule,
        balanced=sampling == "balanced",
        precision=precision,
        validation_fraction=validation_fraction,
        eval_every=eval_every,
        checkpoint_every=eval_every,
        patience=patience,
        seed=seed,
        split_seed=split_seed,
        name=name,
        version=model_version,
    )
    bar = tqdm(total=iterations, desc="train", unit="it", file=sys.stderr)
    last_map: list[float] = []
    stage = [""]

    def progress(p: Progress) -> None:
        if p.stage != stage[0]:  # cross-fitting: one bar pass per fold, then the model itself
            stage[0] = p.stage
            last_map.clear()
            bar.reset(total=iterations)
            bar.set_description(p.stage or "train")
        if p.validation_map is not None:
            last_map.append(p.validation_map)
        bar.n = p.iteration
        bar.set_postfix(loss=f"{p.loss:.4f}", val_mAP=f"{last_map[-1]:.4f}" if last_map else "-", refresh=False)
        bar.refresh()

    result = run_training(
        config,
        dataset.x,
        dataset.y,
        labels,
        output,
        on_progress=progress,
        data_description=", ".join(dataset.sources),
        validation=(held_out.x, held_out.y) if held_out else None,
        validation_description=", ".join(held_out.sources) if held_out else "",
    )
    bar.close()
    click.echo(
        json.dumps(
            {
                "artifact": str(result.artifact),
                "best_iteration": result.best_iteration,
                "validation_map": result.best_map,
                "iterations_run": result.iterations_run,
                "stopped_early": result.stopped_early,
            }
        )
    )


@main.group()
def training() -> None:
    """Queued training runs: list, show, monitor."""


def _run_line(run: dict[str, Any]) -> str:
    best = run.get("best_map")
    return (
        f"{run['id']}  {run.get('status', '?'):9}  {run['stage'] + ' ' if run.get('stage') else ''}"
        f"it {run.get('iteration', 0)}/{run.get('iterations', '?')}"
        f"  loss {run.get('loss', float('nan')):.4f}  val mAP {'-' if best is None else f'{best:.4f}'}"
        f"{'  -> ' + run['artifact'] if run.get('artifact') else ''}"
        f"{'  error: ' + run['error'] if run.get('error') else ''}"
    )


@training.command("list")
@click.option("--limit", default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@friendly_errors
def training_list(limit: int, as_json: bool) -> None:
    """List the newest queued training runs: status, iteration, loss, validation mAP."""
    from audioset_batch.jobs import open_job_store

    runs = open_job_store(_settings().effective_state_url).list_runs(limit)
    if as_json:
        click.echo(json.dumps({"runs": runs}))
        return
    for run in runs:
        click.echo(_run_line(run))


@training.command("show")
@click.argument("run_id")
@friendly_errors
def training_show(run_id: str) -> None:
    """Print a training run's full record as JSON, including where its artifact landed."""
    from audioset_batch.jobs import open_job_store

    run = open_job_store(_settings().effective_state_url).get_run(run_id)
    click.echo(json.dumps(run, indent=2, default=str))


@training.command("monitor")
@click.argument("run_id")
@click.option("--interval", type=float, default=2.0, show_default=True)
@friendly_errors
def training_monitor(run_id: str, interval: float) -> None:
    """Follow a run until it completes or fails; exit 1 if it failed."""
    from tqdm import tqdm

    from audioset_batch.jobs import open_job_store

    store = open_job_store(_settings().effective_state_url)
    run = store.get_run(run_id)
    bar = tqdm(total=run.get("iterations") or 0, desc=run_id, unit="it", file=sys.stderr)
    while True:
        run = store.get_run(run_id)
        bar.total = run.get("iterations") or bar.total
        bar.n = int(run.get("iteration") or 0)
        best = run.get("best_map")
        bar.set_postfix(
            status=run.get("status"),
            loss=f"{run.get('loss', float('nan')):.4f}",
            val_mAP="-" if best is None else f"{best:.4f}",
            refresh=False,
        )
        bar.refresh()
        if run.get("status") in {"completed", "failed"}:
            break
        time.sleep(interval)
    bar.close()
    click.echo(_run_line(run))
    sys.exit(0 if run["status"] == "completed" else 1)


@main.command()
@click.argument("model_path", type=click.Path(file_okay=False, exists=True, path_type=Path))
@click.argument("data", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="Print the numbers as JSON on stdout.")
@click.option(
    "--per-class",
    "per_class",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write class, positives, AP, AUC per class to this CSV.",
)
@click.option(
    "--plot",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write a PNG of per-class AP against class frequency.",
)
@click.option(
    "--precision",
    type=click.Choice(["float32", "bfloat16", "int8", "auto"]),
    default=None,
    help="Inference precision to evaluate (default: AUDIOSET_PRECISION).",
)
@friendly_errors
def evaluate(
    model_path: Path,
    data: tuple[str, ...],
    as_json: bool,
    per_class: Path | None,
    plot: Path | None,
    precision: str | None,
) -> None:
    """Evaluate MODEL on labelled DATA files: mAP, mean AUC, d-prime."""
    from audioset_batch.datasets import load_dataset
    from audioset_batch.pipeline import load_predictor
    from model.metrics import evaluate as compute

    settings = _settings()
    predictor = load_predictor(settings, model_path, precision)
    dataset = load_dataset(list(data), settings)
    if dataset.y.shape[1] != predictor.classes:
        raise click.BadParameter(f"data has {dataset.y.shape[1]} classes, the model {predictor.classes}")
    result = compute(dataset.y, predictor.predict(dataset.x))
    classes = predictor.manifest.classes
    if per_class:
        with per_class.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(["index", "mid", "name", "positives", "average_precision", "auc"])
            for m in result.per_class:
                writer.writerow(
                    [
                        m.index,
                        classes[m.index].mid,
                        classes[m.index].name,
                        m.positives,
                        "" if m.average_precision is None else f"{m.average_precision:.6f}",
                        "" if m.auc is None else f"{m.auc:.6f}",
                    ]
                )
    if plot:
        _plot_ap(result, plot)
    summary = {"model": predictor.tag, **result.summary()}
    if as_json:
        click.echo(json.dumps(summary))
    else:
        click.echo(
            f"model {summary['model']} on {result.clips} clips: mAP {result.mean_average_precision:.4f}  "
            f"mean AUC {result.mean_auc:.4f}  d-prime {result.d_prime:.3f}"
        )


def _plot_ap(result: Any, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [(m.positives, m.average_precision) for m in result.per_class if m.average_precision is not None]
    fig, ax = plt.subplots(figsize=(8, 5))
    ax.scatter([p for p, _ in points], [ap for _, ap in points], s=8, alpha=0.6)
    ax.set_xscale("log")
    ax.set_xlabel("positive clips in the evaluation data (log)")
    ax.set_ylabel("average precision")
    ax.set_title(f"per-class AP (mAP {result.mean_average_precision:.3f})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
