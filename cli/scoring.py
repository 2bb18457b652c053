"""Scoring commands: ``score`` (one file or URL in-process), ``search`` (results), ``evaluate`` (metrics)."""

from __future__ import annotations

import contextlib
import csv
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import IO, Any

import click

from audioset_batch.logs import printable
from audioset_batch.settings import Settings
from cli.common import (
    LocalPath,
    ModelPath,
    fail,
    json_option,
    main,
    note,
    output_file,
    precision_option,
    progress_bar,
    quiet_option,
    warn,
)
from model.atomic_files import replacing

# --- scoring -----------------------------------------------------------------------------------


@main.command()
@click.argument("sources", nargs=-1, required=True)
@click.option(
    "-o",
    "--output",
    type=LocalPath(dir_okay=False, allow_dash=True, path_type=Path),
    default="-",
    show_default=True,
    help="Where the JSON Lines go ('-' for stdout); its folder is created.",
)
@click.option(
    "--scores",
    type=click.Choice(["top", "full"]),
    default=None,
    help="'full' adds every class score per clip (default: AUDIOSET_FULL_SCORES).",
)
@click.option("--top-k", type=click.IntRange(min=1), default=None, help="Labels per clip (default: AUDIOSET_TOP_K).")
@click.option(
    "--labels",
    type=click.Choice(["top", "threshold"]),
    default=None,
    help="Top-k labels, or every label at or above its class's threshold (default: AUDIOSET_LABELS).",
)
@click.option(
    "--events",
    "events_path",
    type=LocalPath(dir_okay=False, allow_dash=False, path_type=Path),
    default=None,
    help="Where the events of recordings go (default: beside --output as NAME.events.jsonl).",
)
@click.option(
    "--model",
    "model_path",
    type=ModelPath(),
    default=None,
    help="Model artifact directory (default: the shipped model).",
)
@precision_option
@quiet_option
@click.pass_obj
def score(
    settings: Settings,
    sources: tuple[str, ...],
    output: Path,
    scores: str | None,
    top_k: int | None,
    labels: str | None,
    events_path: Path | None,
    model_path: Path | None,
    precision: str | None,
    quiet: bool,
) -> None:
    """Score SOURCES in-process, with no queue; writes the worker's JSONL format.

    Each source is a file, a folder (its .h5/.hdf5 files), or a bucket object or prefix: a local
    path, file:///absolute/path, file://bucket/key, cos://bucket/key or s3://bucket/key. A file
    that cannot be scored is reported and skipped; the exit code is then 1. Recordings (clips of any
    other length than the model's 10 frames) get one line per window, and their events go to --events.
    """
    from audioset_batch.errors import InputFileError
    from audioset_batch.scoring.pipeline import ObjectScorer
    from audioset_batch.scoring.score_locations import Skipped, score_locations
    from audioset_batch.storage.locations import distinct_inputs

    found, repeated = distinct_inputs(sources, settings)  # an argument naming nothing: an error
    for location in repeated:
        note(f"{location}: given more than once; scored once")
    target = None if str(output) == "-" else output_file(output)
    scorer = ObjectScorer.from_settings(
        settings,
        model_path=model_path,
        precision=precision,
        top_k=top_k,
        full_scores=(scores == "full") if scores else None,
        labels=labels,
    )

    bar = progress_bar(0, "score", "clip", quiet)
    shown = [""]

    def progress(source: str, done: int, total: int) -> None:
        if source != shown[0]:  # a bar per file: its clips, with their pace and the time left
            shown[0] = source
            bar.reset(total=total)
            bar.set_description(printable(source.rsplit("/", 1)[-1])[:40])
        bar.n = done
        bar.refresh()

    if events_path is None and target is not None:
        events_path = target.with_name(target.name.removesuffix(".jsonl") + ".events.jsonl")
    events_target = None if events_path is None else output_file(events_path)
    spools = contextlib.ExitStack()
    events = None
    if events_target is not None:  # spooled, and written into place (atomically) once every file is scored
        events = spools.enter_context(tempfile.TemporaryFile())  # noqa: SIM115 (the stack closes it)

    def score_all(out: IO[bytes]) -> int:
        failed = 0
        for ended in score_locations(scorer, found.values(), settings, out, progress, events):
            if not isinstance(ended, Skipped):
                note(f"scored {ended.summary['source']}", **ended.summary)
                continue
            exc, name = ended.error, str(ended.location)
            if len(found) == 1 and isinstance(exc, InputFileError):
                fail(f"{type(exc).__name__}: {name}: {exc}")  # the reader saw a temporary file, not the name
            if len(found) == 1:
                raise exc  # a storage error names its object itself
            failed += 1
            warn(f"{name}: {type(exc).__name__}: {exc} (skipped)")
        return failed

    with spools:
        failed = _score_into(target, output, score_all, len(found))
        bar.close()
        _keep_events(events, events_target)
    if failed:
        fail(f"{failed} of {len(found)} file(s) could not be scored (see above); the rest are in {output}")


def _score_into(target: Path | None, output: Path, score_all: Any, files: int) -> int:
    """Score into stdout, or into ``target`` (replaced whole, only if any file was scored)."""
    if target is None:
        failed = score_all(sys.stdout.buffer)
        sys.stdout.flush()
    else:
        with replacing(target) as tmp_target:
            with tmp_target.open("wb") as fh:
                failed = score_all(fh)
            if failed == files:  # leaves an earlier output as it was
                fail(f"none of the {files} file(s) could be scored (see above); {output} is unchanged")
    return int(failed)


def _keep_events(spool: IO[bytes] | None, target: Path | None) -> None:
    """The events file, where any recording had events; never an empty one beside clip results."""
    if spool is None or target is None or not spool.tell():
        return
    spool.seek(0)
    with replacing(target) as tmp, tmp.open("wb") as fh:
        shutil.copyfileobj(spool, fh)
    note(f"events: {target}")


@main.command()
@click.argument("label")
@click.option(
    "--results",
    "results_location",
    default=None,
    help="Results to search: a folder, file:///path, or a bucket prefix such as cos://results/predictions/ "
    "(default: AUDIOSET_RESULTS_BUCKET and AUDIOSET_RESULTS_PREFIX in the configured store).",
)
@click.option("--min-score", type=click.FloatRange(0, 1), default=0.5, show_default=True)
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--events", "in_events", is_flag=True, help="Search the events of recordings (by their peak) instead.")
@json_option
@click.option(
    "--model",
    "model_path",
    type=ModelPath(),
    default=None,
    help="Artifact whose classes the results use (default: AUDIOSET_MODEL_PATH).",
)
@click.pass_obj
def search(
    settings: Settings,
    label: str,
    results_location: str | None,
    min_score: float,
    limit: int,
    in_events: bool,
    as_json: bool,
    model_path: Path | None,
) -> None:
    """Find the clips (or windows of recordings) where LABEL (display name or mid) scored at least --min-score,
    best first; with --events, the events of LABEL in recordings, best peak first.

    Each hit names the clip (source file, index, the window's or event's seconds, a YouTube link at that moment)
    and the results object it was read from.
    """
    from audioset_batch.errors import ObjectNotFoundError
    from audioset_batch.logs import printable
    from audioset_batch.results.search import (
        EventHit,
        Skipped,
        folder_records,
        resolve_label,
        result_records,
        search_events,
        search_records,
    )
    from audioset_batch.storage.factory import store_for
    from audioset_batch.storage.locations import results_url
    from model.artifact import read_manifest

    classes = read_manifest(model_path or settings.model_path).classes
    target = resolve_label(label, classes)
    where = results_url(results_location, settings)
    skipped = Skipped()
    records = (
        folder_records(where, skipped, events=in_events)
        if isinstance(where, Path)
        else result_records(store_for(where.scheme, settings), where, skipped, events=in_events)
    )
    try:
        hits: list[Any] = (search_events if in_events else search_records)(records, target, min_score, limit)
    except ObjectNotFoundError as exc:
        raise ObjectNotFoundError(
            f"{exc}: no results there; point --results at a results folder or prefix, or score some files first"
        ) from exc
    for hit in hits:
        if as_json:
            click.echo(json.dumps({"label": target.name, "mid": target.mid, **hit.to_json()}))
        else:
            link = f"  {hit.youtube_url}" if hit.youtube_url else ""
            if isinstance(hit, EventHit):
                at = f" {hit.start_seconds:g}-{hit.end_seconds:g} s"
            else:
                at = "" if hit.offset_seconds is None else f" at {hit.offset_seconds:g} s"
            click.echo(printable(f"{hit.score:.3f}  {hit.source} #{hit.index}{at}{link}  ({hit.results})"))
    if skipped.lines:
        where_first = printable(skipped.first or "")
        warn(f"skipped {skipped.lines} line(s) that are not result records, the first at {where_first}")
    if not hits:
        note(f"no {'event' if in_events else 'clip'} with {target.name} >= {min_score} in {where}")


@main.command()
@click.argument("model_path", type=ModelPath())
@click.argument("data", nargs=-1, required=True)
@json_option
@click.option(
    "--per-class",
    "per_class",
    type=LocalPath(dir_okay=False, path_type=Path),
    default=None,
    help="Write class, positives, AP, AUC per class to this CSV.",
)
@click.option(
    "--plot",
    type=LocalPath(dir_okay=False, path_type=Path),
    default=None,
    help="Write a PNG of per-class AP against class frequency.",
)
@precision_option
@quiet_option
@click.pass_obj
def evaluate(
    settings: Settings,
    model_path: Path,
    data: tuple[str, ...],
    as_json: bool,
    per_class: Path | None,
    plot: Path | None,
    precision: str | None,
    quiet: bool,
) -> None:
    """Evaluate MODEL on labelled DATA files: mAP, mean AUC, d-prime.

    Clips of any other length than the model's are scored as the maximum over their windows (AUDIOSET_WINDOW_HOP).
    """
    from audioset_batch.scoring.model_loading import load_predictor
    from audioset_batch.training.datasets import load_dataset
    from model.metrics import evaluate as compute

    predictor = load_predictor(settings, model_path, precision)
    dataset = load_dataset(list(data), settings, frames=predictor.frames, classes=predictor.classes, windows=True)
    bar = progress_bar(len(dataset.x), "evaluate", "clip", quiet)
    if dataset.x.shape[1] == predictor.frames:
        scores = predictor.predict(dataset.x, progress=bar.update)
    else:  # clips of another length: each scored as the maximum over its windows, as recordings are
        from audioset_batch.scoring.windows import pooled_clip_scores

        hop = min(settings.window_hop, predictor.frames)
        scores = pooled_clip_scores(predictor.predict, dataset.x, predictor.frames, hop)
        bar.update(len(dataset.x))
    bar.close()
    result = compute(dataset.y, scores)
    classes = predictor.manifest.classes
    if per_class:
        with output_file(per_class).open("w", newline="", encoding="utf-8") as fh:
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
        _plot_ap(result, output_file(plot))
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
