"""Recordings through the real parts: a queued worker (redis-server, an HTTP S3 endpoint) writes window records,
an events object and a summary that counts them; `audioset score` writes events beside its output; search never
mistakes events for clip records."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import orjson
import pytest

from audioset_batch.jobs.factory import open_job_store
from audioset_batch.storage.cos_store import CosStore
from tests.conftest import Stack, WorkerProcess
from tests.helpers import wait_job
from tests.integration.test_integration import cli

pytestmark = pytest.mark.integration


def write_recording(path: Path, frames: int, seed: int = 0) -> Path:
    with h5py.File(path, "w") as f:
        f.create_dataset("x", data=np.random.default_rng(seed).integers(0, 256, size=(frames, 128), dtype=np.uint8))
        f["x"].attrs["seconds_per_frame"] = 1.0
    return path


def test_a_queued_worker_scores_a_recording_into_windows_and_events(
    stack: Stack, worker: WorkerProcess, tmp_path: Path
) -> None:
    settings = stack.settings()
    store = CosStore(settings)
    store.upload_file(write_recording(tmp_path / "day.h5", 43), stack.input_bucket, "rec/day.h5")
    queued = cli(stack, "enqueue", f"cos://{stack.input_bucket}/rec/day.h5", "--job", "recording", "--json")
    assert queued.returncode == 0, queued.stderr
    job = json.loads(queued.stdout)["job"]
    status = wait_job(open_job_store(settings.effective_state_url), job)
    assert status.scored == 1, worker.text()[-3000:]
    base = f"predictions/{stack.input_bucket}/rec/day.h5"
    summary = orjson.loads(store.get_bytes(stack.results_bucket, base + ".summary.json") or b"{}")
    assert (summary["clips"], summary["windows"], summary["window_hop"], summary["seconds_per_frame"]) == (1, 8, 5, 1.0)
    assert summary["event_edges"] == "frames"  # the worker's model scores each frame: edges fall on frames
    records = [
        orjson.loads(line) for line in (store.get_bytes(stack.results_bucket, base + ".jsonl") or b"").splitlines()
    ]
    assert [r["offset_seconds"] for r in records] == [0, 5, 10, 15, 20, 25, 30, 33]
    events = (store.get_bytes(stack.results_bucket, base + ".events.jsonl") or b"").splitlines()
    assert len(events) == summary["events"] > 0 and summary["events_result"].endswith("day.h5.events.jsonl")
    assert all(0 <= orjson.loads(e)["start_seconds"] < orjson.loads(e)["end_seconds"] <= 43 for e in events)

    # The hop is part of what a result was made with: the same object with another hop is scored again.
    env = {**stack.env, "AUDIOSET_WINDOW_HOP": "10"}
    again = cli(Stack(env, stack.input_bucket, stack.results_bucket), "score", f"cos://{stack.input_bucket}/rec/day.h5")
    assert again.returncode == 0 and len(again.stdout.splitlines()) == 5  # 0, 10, 20, 30, 33

    found = cli(stack, "search", "Class 1", "--min-score", "0", "--json")
    assert found.returncode == 0, found.stderr
    hits = [json.loads(line) for line in found.stdout.splitlines()]
    assert hits and all(hit["results"].endswith("day.h5.jsonl") for hit in hits)  # never the events file
    assert all(hit["offset_seconds"] is not None for hit in hits)
    in_events = cli(stack, "search", "Class 1", "--events", "--min-score", "0", "--json")
    assert in_events.returncode == 0, in_events.stderr
    found_events = [json.loads(line) for line in in_events.stdout.splitlines()]
    class_1 = [e for e in map(orjson.loads, events) if e["class"]["name"] == "Class 1"]
    assert len(found_events) == len(class_1) and all(e["results"].endswith("day.h5.events.jsonl") for e in found_events)
    assert [e["score"] for e in found_events] == sorted((e["peak_score"] for e in class_1), reverse=True)


def test_score_writes_events_beside_its_output_and_says_where(stack: Stack, tmp_path: Path) -> None:
    source = write_recording(tmp_path / "walk.h5", 25, seed=3)
    out = tmp_path / "out" / "walk.jsonl"
    scored = cli(stack, "score", str(source), "-o", str(out), "--quiet")
    assert scored.returncode == 0, scored.stderr
    assert f"events: {out.with_name('walk.events.jsonl')}" in scored.stderr
    assert len(out.read_text().splitlines()) == 4  # windows at 0, 5, 10, 15
    chosen = tmp_path / "mine.jsonl"
    again = cli(stack, "score", str(source), "-o", str(tmp_path / "o.jsonl"), "--events", str(chosen), "--quiet")
    assert again.returncode == 0 and chosen.read_text() == out.with_name("walk.events.jsonl").read_text()


def test_a_worker_with_a_hop_longer_than_the_models_window_never_starts(stack: Stack, tmp_path: Path) -> None:
    from tests.faults.test_pending import start_worker_expecting_exit

    code, text = start_worker_expecting_exit({**stack.env, "AUDIOSET_WINDOW_HOP": "12"}, tmp_path / "w.log")
    assert code == 1 and "cannot start: AUDIOSET_WINDOW_HOP=12: windows would skip frames; use 1..10" in text
    assert " ready." not in text
