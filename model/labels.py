"""Class lists: the ``index,mid,display_name`` CSV the AudioSet release uses."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path


class LabelFileError(ValueError):
    """A class-list CSV is malformed."""


@dataclass(frozen=True, slots=True)
class ClassLabel:
    index: int
    mid: str
    name: str


def parse_labels(text: str, source: str = "<labels>") -> list[ClassLabel]:
    """Parse ``index,mid,display_name`` rows; indices must run 0..C-1 in order."""
    reader = csv.DictReader(io.StringIO(text))
    needed = {"index", "mid", "display_name"}
    if reader.fieldnames is None or not needed.issubset(reader.fieldnames):
        raise LabelFileError(f"{source}: header must contain index,mid,display_name, got {reader.fieldnames}")
    labels: list[ClassLabel] = []
    for row_number, row in enumerate(reader):
        try:
            index = int(row["index"])
        except (TypeError, ValueError) as exc:
            raise LabelFileError(f"{source}: row {row_number + 2}: index {row['index']!r} is not an integer") from exc
        if index != row_number:
            raise LabelFileError(f"{source}: row {row_number + 2}: expected index {row_number}, got {index}")
        labels.append(ClassLabel(index=index, mid=row["mid"], name=row["display_name"]))
    if not labels:
        raise LabelFileError(f"{source}: no classes")
    return labels


def load_labels(path: str | Path) -> list[ClassLabel]:
    path = Path(path)
    return parse_labels(path.read_text(encoding="utf-8"), source=str(path))


def labels_to_json(labels: list[ClassLabel]) -> list[dict[str, object]]:
    return [{"index": c.index, "mid": c.mid, "name": c.name} for c in labels]


def labels_from_json(items: list[dict[str, object]]) -> list[ClassLabel]:
    return [ClassLabel(index=int(str(c["index"])), mid=str(c["mid"]), name=str(c["name"])) for c in items]
