"""End to end with real parts: redis-server, moto's S3 server over HTTP, a Celery worker process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest

from audioset_batch.errors import LocationError
from audioset_batch.jobs.factory import open_job_store
from audioset_batch.storage.cos_store import CosStore
from producers.enqueue import enqueue
from tests.conftest import ROOT, Stack, WorkerProcess
from tests.helpers import stack_tag, wait_job, write_h5
from worker.app import make_app

pytestmark = pytest.mark.integration


def upload_batch(stack: Stack, tmp_path: Path, prefix: str = "batch/") -> dict[str, int]:
    store = CosStore(stack.settings())
    clips = {}
    for i in range(3):
        path = write_h5(tmp_path / f"f{i}.h5", clips=5 + i, classes=12, seed=i)
        store.upload_file(path, stack.input_bucket, f"{prefix}f{i}.h5")
        clips[f"{prefix}f{i}.h5"] = 5 + i
    store.put_bytes(b"definitely not hdf5", stack.input_bucket, f"{prefix}corrupt.h5")
    store.put_bytes(b"notes", stack.input_bucket, f"{prefix}readme.txt")
    return clips


def cli(stack: Stack, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        env={**os.environ, **stack.env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_prefix_is_scored_corrupt_file_is_isolated_reenqueue_is_noop_force_replaces(
    stack: Stack, worker: WorkerProcess, tmp_path: Path
) -> None:
    clips = upload_batch(stack, tmp_path)
    settings = stack.settings()
    store = CosStore(settings)
    results = stack.results_bucket

    first = cli(stack, "enqueue", f"cos://{stack.input_bucket}/batch/", "--job", "nightly", "--wait", "--json")
    assert first.returncode == 1, first.stderr  # one file failed
    status = json.loads(first.stdout.splitlines()[-1])
    assert (status["total"], status["scored"], status["failed"], status["pending"]) == (4, 3, 1, 0)
    assert status["clips"] == sum(clips.values()) and status["finished_at"] >= status["created_at"]

    # Why a file failed is in the job, through the real worker: no need to open its .error.json.
    shown = cli(stack, "jobs", "status", "nightly", "--failed")
    assert shown.returncode == 1, shown.stderr  # a job with a failed file exits 1, with or without --wait
    failed_line = next(line for line in shown.stdout.splitlines() if line.startswith("failed:"))
    assert "batch/corrupt.h5" in failed_line and "NotHDF5Error: " in failed_line and "not an HDF5 file" in failed_line
    assert f"{sum(clips.values())} clips in" in shown.stdout and "finished 20" in shown.stdout
    as_json = json.loads(cli(stack, "jobs", "status", "nightly", "--failed", "--json").stdout)
    assert [(f["item"].endswith("corrupt.h5"), f["error"]) for f in as_json["failed_items"]] == [(True, "NotHDF5Error")]

    modified = {}
    for key, n in clips.items():
        body = store.get_bytes(results, f"predictions/{stack.input_bucket}/{key}.jsonl")
        assert body is not None
        lines = [orjson.loads(line) for line in body.splitlines()]
        assert [line["index"] for line in lines] == list(range(n))
        assert lines[0]["source"] == f"{stack.input_bucket}/{key}"
        assert lines[0]["model"] == stack_tag() and len(lines[0]["labels"]) == 5
        assert lines[1]["video_id"].startswith("vid") and lines[1]["start_time_seconds"] == 10.0
        summary = orjson.loads(store.get_bytes(results, f"predictions/{stack.input_bucket}/{key}.summary.json") or b"")
        assert summary["clips"] == n and summary["etag"] == store.stat(stack.input_bucket, key).etag
        assert 0 <= summary["metrics"]["mAP"] <= 1 and "d_prime" in summary["metrics"]
        modified[key] = store.client.head_object(Bucket=results, Key=f"predictions/{stack.input_bucket}/{key}.jsonl")[
            "LastModified"
        ]
    error = orjson.loads(
        store.get_bytes(results, f"predictions/{stack.input_bucket}/batch/corrupt.h5.error.json") or b""
    )
    assert error["error"] == "NotHDF5Error" and "not an HDF5 file" in error["message"]
    assert store.get_bytes(results, f"predictions/{stack.input_bucket}/batch/corrupt.h5.jsonl") is None
    assert "batch/corrupt.h5" in worker.text() and "NotHDF5Error" in worker.text()
    # Celery (and Flower) count the corrupt file's task as failed, the others as succeeded
    assert worker.text().count("raised expected: FileFailedError") == 1 and worker.text().count("succeeded in") == 3
    assert store.get_bytes(results, f"predictions/{stack.input_bucket}/batch/readme.txt.jsonl") is None

    jobs = open_job_store(settings.effective_state_url)
    app = make_app(settings)
    time.sleep(1.1)  # S3 LastModified has one-second resolution
    again = enqueue(app, jobs, [f"cos://{stack.input_bucket}/batch/"], settings)
    status2 = wait_job(jobs, again.job)
    assert (status2.skipped, status2.scored, status2.failed) == (3, 0, 1)
    for key in clips:
        head = store.client.head_object(Bucket=results, Key=f"predictions/{stack.input_bucket}/{key}.jsonl")
        assert head["LastModified"] == modified[key]

    forced = enqueue(app, jobs, [f"cos://{stack.input_bucket}/batch/f0.h5"], settings, force=True)
    status3 = wait_job(jobs, forced.job)
    assert (status3.total, status3.scored) == (1, 1)
    # kept so a worker sends a task lost with Redis again alike (worker/redelivery.py)
    assert (status2.queue, status2.force, status3.queue, status3.force) == (settings.queue, False, settings.queue, True)
    body = store.get_bytes(results, f"predictions/{stack.input_bucket}/batch/f0.h5.jsonl") or b""
    assert len(body.splitlines()) == clips["batch/f0.h5"]  # replaced, never appended
    head = store.client.head_object(Bucket=results, Key=f"predictions/{stack.input_bucket}/batch/f0.h5.jsonl")
    assert head["LastModified"] > modified["batch/f0.h5"]

    listing = cli(stack, "jobs", "list", "--json")
    assert listing.returncode == 0, listing.stderr
    names = {j["name"] for j in json.loads(listing.stdout)["jobs"]}
    assert "nightly" in names


def test_duplicate_delivery_never_duplicates_lines(stack: Stack, worker: WorkerProcess, tmp_path: Path) -> None:
    settings = stack.settings()
    store = CosStore(settings)
    path = write_h5(tmp_path / "d.h5", clips=4, seed=9)
    store.upload_file(path, stack.input_bucket, "dup/d.h5")
    app = make_app(settings)
    jobs = open_job_store(settings.effective_state_url)
    job = jobs.create_job("dups")
    url = f"cos://{stack.input_bucket}/dup/d.h5"
    jobs.add_items(job, [url])
    for _ in range(3):  # the same message delivered three times, as after redeliveries
        app.send_task("audioset.score_object", args=[url], kwargs={"job": job}, queue=settings.queue)
    status = wait_job(jobs, job)
    assert (status.total, status.scored, status.failed) == (1, 1, 0)
    worker.wait_for("already scored", 2)
    assert worker.text().count("already scored") == 2
    body = store.get_bytes(stack.results_bucket, f"predictions/{stack.input_bucket}/dup/d.h5.jsonl") or b""
    assert len(body.splitlines()) == 4


def test_missing_object_gets_error_record_without_retries(stack: Stack, worker: WorkerProcess) -> None:
    settings = stack.settings()
    app = make_app(settings)
    jobs = open_job_store(settings.effective_state_url)
    before = {s.id for s in jobs.list_jobs(None)}
    # a missing object is not expanded: the enqueue refuses, and leaves no empty job behind
    with pytest.raises(LocationError, match=r"no \.h5 or \.hdf5 file there"):
        enqueue(app, jobs, [f"cos://{stack.input_bucket}/gone.h5"], settings)
    assert {s.id for s in jobs.list_jobs(None)} == before
    job = jobs.create_job("missing")
    url = f"cos://{stack.input_bucket}/gone.h5"
    jobs.add_items(job, [url])
    app.send_task("audioset.score_object", args=[url], kwargs={"job": job}, queue=settings.queue)
    status = wait_job(jobs, job, 60)
    assert status.failed == 1
    record = orjson.loads(
        CosStore(settings).get_bytes(stack.results_bucket, f"predictions/{stack.input_bucket}/gone.h5.error.json")
        or b""
    )
    assert record["error"] == "ObjectNotFoundError" and record["attempts"] == 1
    assert "retrying" not in worker.text()


def test_secrets_never_reach_the_worker_log(stack: Stack, worker: WorkerProcess, tmp_path: Path) -> None:
    settings = stack.settings()
    store = CosStore(settings)
    store.upload_file(write_h5(tmp_path / "s.h5", clips=2), stack.input_bucket, "s.h5")
    jobs = open_job_store(settings.effective_state_url)
    result = enqueue(make_app(settings), jobs, [f"cos://{stack.input_bucket}/s.h5"], settings)
    assert wait_job(jobs, result.job).scored == 1
    assert stack.env["AUDIOSET_COS_SECRET_ACCESS_KEY"] not in worker.text()
