"""What the dashboard shows, read from the same job store and results bucket the CLI reads.

Plain functions over a :class:`Sources`: no HTTP here, so each view's data is testable on its own.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from audioset_batch.errors import AudiosetError
from audioset_batch.jobs.job_store import JobStatus, JobStore, item_url
from audioset_batch.results.keys import ResultKeys, item_result_keys
from audioset_batch.results.records import loads
from audioset_batch.results.search import Hit, Skipped, resolve_label, result_records, search_records
from audioset_batch.settings import Settings
from audioset_batch.storage.object_store import ObjectStore, ObjectURL
from model.labels import ClassLabel

#: Files listed on one page of a job.
PAGE_SIZE = 200
#: Bytes of a results object read to show its first clips (the JSONL can be gigabytes).
HEAD_BYTES = 256 * 1024
#: Summaries a job's plots read at most (each is one GET); the page says when it read fewer than the job has.
PLOT_FILES = 2000


@dataclass(frozen=True, slots=True)
class Sources:
    """The shared objects every view reads, built once by the app."""

    settings: Settings
    jobs: JobStore
    results: ObjectStore
    classes: list[ClassLabel]
    model: str

    @property
    def bucket(self) -> str:
        return self.settings.results_bucket

    def url_of(self, source: str) -> str:
        """A result record's ``source`` (``bucket/key``) as the URL of the object it was scored from."""
        return source if "://" in source else f"{self.settings.store_scheme}://{source}"

    def keys(self, url: str) -> ResultKeys | None:
        return item_result_keys(url, self.settings.results_prefix)


def job_row(status: JobStatus) -> dict[str, Any]:
    """A job as a row: ``jobs status --json`` plus the share of files ended, for the progress bar."""
    data = status.to_json()
    ended = status.total - status.pending
    data["percent"] = round(100.0 * ended / status.total, 1) if status.total else 100.0
    return data


@dataclass(frozen=True, slots=True)
class FilePage:
    rows: list[dict[str, Any]]
    total: int  # files matching the filter
    offset: int
    counts: dict[str, int]


def job_files(sources: Sources, job: str, status: str | None, contains: str, offset: int) -> FilePage:
    """One page of a job's files (failed first, then by name), each with its status and reason."""
    items = sources.jobs.items(job)
    counts = dict(Counter(items.values()))
    wanted = contains.strip().lower()
    chosen = [
        item
        for item, state in items.items()
        if (status is None or state == status) and (not wanted or wanted in item.lower())
    ]
    chosen.sort(key=lambda item: (items[item] != "failed", item))
    offset = max(0, min(offset, max(len(chosen) - 1, 0)))
    page = chosen[offset : offset + PAGE_SIZE]
    ends = sources.jobs.ends(job) if page else {}
    rows = []
    for item in page:
        end = ends.get(item, {})
        rows.append({"item": item, "url": item_url(item, end), "status": items[item], **_end_fields(end)})
    return FilePage(rows=rows, total=len(chosen), offset=offset, counts=counts)


def _end_fields(end: dict[str, Any]) -> dict[str, Any]:
    return {
        "error": end.get("error"),
        "message": end.get("message"),
        "clips": end.get("clips"),
        "seconds": end.get("seconds"),
    }


@dataclass(slots=True)
class FileView:
    url: str
    summary: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    clips: list[dict[str, Any]] = field(default_factory=list)
    more: bool = False  # the results hold more clips than shown
    events: list[dict[str, Any]] = field(default_factory=list)  # a recording's first events
    per_class_ap: list[tuple[str, float]] = field(default_factory=list)  # best first


def file_view(sources: Sources, url: str) -> FileView:
    """A file's summary (or error record) and the top labels of its first clips."""
    view = FileView(url=url)
    keys = sources.keys(url)
    if keys is None:
        return view
    view.summary = loads(sources.results.get_bytes(sources.bucket, keys.summary))
    view.error = loads(sources.results.get_bytes(sources.bucket, keys.error))
    if view.summary is None:
        return view
    view.clips = _head(sources.results.get_bytes(sources.bucket, keys.jsonl, limit=HEAD_BYTES) or b"")
    view.more = len(view.clips) < int(view.summary.get("windows") or view.summary.get("clips") or 0)
    if view.summary.get("events"):
        view.events = _head(sources.results.get_bytes(sources.bucket, keys.events, limit=HEAD_BYTES) or b"")
    aps = view.summary.get("per_class_ap") or {}
    names = {str(label.index): label.name for label in sources.classes}
    view.per_class_ap = sorted(
        ((names.get(index, index), float(ap)) for index, ap in aps.items() if isinstance(ap, int | float)),
        key=lambda row: -row[1],
    )
    return view


def _head(head: bytes) -> list[dict[str, Any]]:
    """The complete records in the first :data:`HEAD_BYTES` of a JSON Lines object."""
    lines = head.split(b"\n")
    complete = lines[:-1] if len(head) >= HEAD_BYTES else lines
    return [record for line in complete if (record := loads(line)) is not None]


@dataclass(frozen=True, slots=True)
class JobPlots:
    labels: list[tuple[str, int]]  # clips per top label, most first
    file_maps: list[tuple[str, float]]  # mAP of each labelled file, best first
    read: int  # summaries read
    scored: int  # scored files in the job


_plot_cache: dict[tuple[str, int, int], JobPlots] = {}
_plot_lock = threading.Lock()


def job_plots(sources: Sources, status: JobStatus) -> JobPlots:
    """The job's label distribution (each clip counted once, under its top label) and its files' mAP, summed from
    the files' summaries; kept while the job's counts (``status``, as the page read them) stay the same."""
    job = status.id
    cache_key = (job, status.scored, status.total)
    with _plot_lock:
        cached = _plot_cache.get(cache_key)
    if cached is not None:
        return cached
    scored = sorted(item for item, state in sources.jobs.items(job, "scored").items())
    ends = sources.jobs.ends(job, "scored")
    urls = [item_url(item, ends.get(item)) for item in scored[:PLOT_FILES]]
    counts: Counter[str] = Counter()
    maps: list[tuple[str, float]] = []
    names = {str(label.index): label.name for label in sources.classes}
    with ThreadPoolExecutor(max_workers=8, thread_name_prefix="ui-plots") as pool:
        for url, summary in zip(urls, pool.map(lambda u: _summary(sources, u), urls), strict=True):
            if summary is None:
                continue
            for index, count in (summary.get("top_labels") or {}).items():
                if isinstance(count, int):
                    counts[names.get(index, index)] += count
            value = (summary.get("metrics") or {}).get("mAP")
            if isinstance(value, int | float):
                maps.append((url, float(value)))
    plots = JobPlots(
        labels=counts.most_common(25), file_maps=sorted(maps, key=lambda r: -r[1]), read=len(urls), scored=len(scored)
    )
    with _plot_lock:
        if len(_plot_cache) > 64:
            _plot_cache.clear()
        _plot_cache[cache_key] = plots
    return plots


def _summary(sources: Sources, url: str) -> dict[str, Any] | None:
    keys = sources.keys(url)
    if keys is None:
        return None
    try:
        return loads(sources.results.get_bytes(sources.bucket, keys.summary))
    except AudiosetError:
        return None


def suggestions(sources: Sources) -> list[str]:
    return sorted(label.name for label in sources.classes)


def search(sources: Sources, label: str, min_score: float, limit: int, job: str | None) -> tuple[list[Hit], int]:
    """The clips where ``label`` scored highest, over a job's results or the whole results prefix, and how many
    unreadable lines were passed over. Raises :class:`UnknownLabelError` with suggestions on a miss."""
    target = resolve_label(label, sources.classes)
    skipped = Skipped()
    records = _job_records(sources, job, skipped) if job else _all_records(sources, skipped)
    return search_records(records, target, min_score, limit), skipped.lines


def _all_records(sources: Sources, skipped: Skipped) -> Iterator[dict[str, Any]]:
    where = ObjectURL(sources.settings.store_scheme, sources.bucket, sources.settings.results_prefix)
    return result_records(sources.results, where, skipped)


def _job_records(sources: Sources, job: str, skipped: Skipped) -> Iterator[dict[str, Any]]:
    ends = sources.jobs.ends(job)
    for item, state in sorted(sources.jobs.items(job).items()):
        keys = sources.keys(item_url(item, ends.get(item))) if state in ("scored", "skipped") else None
        if keys is not None:
            where = ObjectURL(sources.settings.store_scheme, sources.bucket, keys.jsonl)
            yield from result_records(sources.results, where, skipped)
