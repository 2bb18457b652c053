"""In-process scoring of local files and bucket objects into one JSON Lines stream, with no queue.

What `audioset score` does, as a library call: each input's lines reach the output only once the whole
input is scored, so a file that fails half way leaves no lines of its own.
"""

from __future__ import annotations

import functools
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from audioset_batch.errors import InputFileError, StorageError
from audioset_batch.scoring.pipeline import ObjectScorer
from audioset_batch.settings import Settings
from audioset_batch.storage.locations import Location, local_file
from audioset_batch.storage.object_store import ObjectURL


@dataclass(frozen=True, slots=True)
class Scored:
    location: Location
    summary: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Skipped:
    """An input that could not be scored (bad file, storage error); nothing of it is in the output."""

    location: Location
    error: InputFileError | StorageError


def score_locations(
    scorer: ObjectScorer,
    locations: Iterable[Location],
    settings: Settings,
    out: IO[bytes],
    progress: Callable[[str, int, int], None] | None = None,
    events: IO[bytes] | None = None,
) -> Iterator[Scored | Skipped]:
    """Score each location into ``out`` in turn, yielding how each ended (its summary, or why it was skipped);
    ``progress(source, done, total)`` hears of the clips scored in the file at hand after each chunk; the events
    of recordings go to ``events``."""
    for location in locations:
        source = f"{location.bucket}/{location.key}" if isinstance(location, ObjectURL) else str(location)
        try:
            with (
                local_file(location, settings, suffix=".h5") as path,
                tempfile.TemporaryFile() as spool,
                tempfile.TemporaryFile() as events_spool,
            ):
                hear = None if progress is None else functools.partial(progress, source)
                result = scorer.score_local(path, spool, source, progress=hear, events_out=events_spool)
                for done, target in ((spool, out), (events_spool, events)):
                    if target is not None:
                        done.seek(0)
                        shutil.copyfileobj(done, target)
        except (InputFileError, StorageError) as exc:
            yield Skipped(location, exc)
            continue
        summary: dict[str, Any] = {
            "source": source,
            "clips": result.clips,
            "model": scorer.model,
            "seconds": round(result.seconds, 3),
            "metrics": result.metrics,
        }
        if result.windows is not None:
            summary |= {"windows": result.windows, "events": result.events}
        if result.notes:
            summary["notes"] = result.notes
        yield Scored(location, summary)
