"""Labels by threshold, events by the model's thresholds, and the already-scored check that follows both."""

from __future__ import annotations

import io
from pathlib import Path

import h5py
import numpy as np
import orjson
import pytest

from audioset_batch.errors import ConfigError
from audioset_batch.scoring.clip_records import OutputOptions, encode_records
from audioset_batch.scoring.limits import output_options
from audioset_batch.scoring.made_with import made_with, still_stands
from audioset_batch.scoring.pipeline import score_file
from audioset_batch.settings import load_settings
from tests.helpers import make_labels

CLASSES = make_labels(3)


def test_labels_by_threshold_list_every_class_at_or_above_its_own_threshold_best_first() -> None:
    scores = np.array([[0.9, 0.2, 0.6], [0.1, 0.1, 0.1]], dtype=np.float32)
    options = OutputOptions(labels="threshold", thresholds=(0.5, 0.2, 0.7))
    lines = encode_records(scores, classes=CLASSES, source="s", model="m", options=options).splitlines()
    first, silent = (orjson.loads(line) for line in lines)
    assert [label["index"] for label in first["labels"]] == [0, 1]  # 0.6 is under class 2's 0.7
    assert silent["labels"] == []  # a silent clip gets no label, not five


def test_labels_by_threshold_need_a_model_with_thresholds() -> None:
    with pytest.raises(ConfigError, match="audioset thresholds MODEL"):
        output_options(load_settings(labels="threshold"), thresholds=None)
    assert output_options(load_settings(labels="threshold"), thresholds=[0.5] * 3).labels == "threshold"


def test_events_use_the_models_thresholds_unless_one_is_set(tmp_path: Path) -> None:
    path = tmp_path / "rec.h5"
    with h5py.File(path, "w") as f:
        f["x"] = np.zeros((30, 128), dtype=np.uint8)

    def flat(x: np.ndarray) -> np.ndarray:
        return np.tile(np.array([[0.6, 0.4, 0.1]], dtype=np.float32), (len(x), 1))

    def events(options: OutputOptions) -> set[int]:
        out = io.BytesIO()
        score_file(
            path,
            io.BytesIO(),
            predict=flat,
            classes=CLASSES,
            model="m",
            source="s",
            options=options,
            frames=10,
            events_out=out,
        )
        return {orjson.loads(line)["class"]["index"] for line in out.getvalue().splitlines()}

    assert events(OutputOptions(thresholds=(0.7, 0.3, 0.05))) == {1, 2}  # per class: 0.6 < 0.7
    assert events(OutputOptions(thresholds=(0.7, 0.3, 0.05), event_threshold=0.5)) == {0}  # one for all
    assert events(OutputOptions()) == {0, 1}  # no thresholds in the model: 0.3


def test_a_result_made_otherwise_does_not_stand() -> None:
    options = OutputOptions(thresholds=(0.5, 0.5, 0.5))
    summary = {"etag": "e", "model": "m", **made_with(options)}
    assert still_stands(summary, "e", "m", options)
    assert not still_stands(summary, "e", "m", OutputOptions(thresholds=(0.5, 0.5, 0.6)))  # new thresholds
    assert not still_stands(summary, "e", "m", OutputOptions(thresholds=(0.5, 0.5, 0.5), labels="threshold"))
    assert not still_stands(summary, "e", "m", OutputOptions(thresholds=(0.5, 0.5, 0.5), window_hop=10))
    old = {"etag": "e", "model": "m", "top_k": 5, "full_scores": False}  # a summary from before recordings
    assert still_stands(old, "e", "m", OutputOptions())
    assert not still_stands(old, "e", "m", OutputOptions(labels="threshold", thresholds=(0.5, 0.5, 0.5)))
    recording = {**summary, "windows": 8}  # a recording's events were placed on window spans
    assert still_stands(recording, "e", "m", options) and not still_stands(recording, "e", "m", options, "frames")
    assert still_stands({**recording, "event_edges": "frames"}, "e", "m", options, "frames")
    assert still_stands(summary, "e", "m", options, "frames")  # a file of clips has no events to place


def test_a_result_stands_whatever_precision_computed_it_but_not_for_another_model() -> None:
    """A fleet of mixed CPUs serves one model in the precision each host's `auto` picks: a file scored by
    `m@1+int8` is not scored again by a host computing `m@1+bfloat16` or `m@1`; `m@2` scores it again."""
    options = OutputOptions()
    summary = {"etag": "e", "model": "m@1+int8", **made_with(options)}
    assert still_stands(summary, "e", "m@1+bfloat16", options)
    assert still_stands(summary, "e", "m@1", options)
    assert not still_stands(summary, "e", "m@2+int8", options)
    assert not still_stands(summary, "e2", "m@1+int8", options)
