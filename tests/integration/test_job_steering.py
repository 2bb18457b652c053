"""Steering a job with real parts: `jobs retry` and `jobs cancel` against redis-server, an HTTP S3 endpoint and
Celery workers, never losing or duplicating a result."""

from __future__ import annotations

import json
import time
from pathlib import Path

import orjson
import pytest

from audioset_batch.jobs.factory import open_job_store
from audioset_batch.storage.cos_store import CosStore
from audioset_batch.task_messages import ScoreMessage
from audioset_batch.task_names import SCORE_TASK
from tests.conftest import Stack, WorkerProcess
from tests.helpers import wait_job, write_h5
from tests.integration.test_integration import cli
from worker.app import make_app

pytestmark = pytest.mark.integration


def test_a_cancelled_job_is_not_scored_by_workers_started_after_it(stack: Stack, tmp_path: Path) -> None:
    """Celery's revokes live in a worker's memory and are lost when it restarts: the job store is asked instead."""
    store = CosStore(stack.settings())
    for i in range(4):
        store.upload_file(write_h5(tmp_path / f"c{i}.h5", clips=3, seed=i), stack.input_bucket, f"cancel/c{i}.h5")
    queued = cli(stack, "enqueue", f"cos://{stack.input_bucket}/cancel/", "--job", "to-cancel")
    assert queued.returncode == 0, queued.stderr
    cancelled = cli(stack, "jobs", "cancel", "to-cancel")
    assert cancelled.returncode == 0 and "4 pending file(s) cancelled" in cancelled.stderr, cancelled.stderr
    again = cli(stack, "jobs", "cancel", "to-cancel")  # twice is harmless
    assert again.returncode == 0 and "0 pending file(s) cancelled" in again.stderr

    worker = WorkerProcess(stack.env, tmp_path / "worker.log")  # starts after the cancel, with no revokes
    try:
        worker.wait_for("was cancelled", 4)
    finally:
        worker.stop()
    written = [info.key for info in store.list(stack.results_bucket, "predictions/")]
    assert [key for key in written if "/_jobs/" not in key] == []  # nothing of the job was scored: only its manifest
    status = json.loads(cli(stack, "jobs", "status", "to-cancel", "--json").stdout)
    assert (status["cancelled"], status["pending"], status["state"], status["scored"]) == (4, 0, "cancelled", 0)


def test_retry_scores_the_failed_files_once_and_a_stale_message_cannot_mark_them(
    stack: Stack, worker: WorkerProcess, tmp_path: Path
) -> None:
    settings = stack.settings()
    store = CosStore(settings)
    store.upload_file(write_h5(tmp_path / "good.h5", clips=4, seed=1), stack.input_bucket, "retry/good.h5")
    store.put_bytes(b"half an upload", stack.input_bucket, "retry/late.h5")
    first = cli(stack, "enqueue", f"cos://{stack.input_bucket}/retry/", "--job", "to-retry", "--wait")
    assert first.returncode == 1, first.stderr  # late.h5 failed

    store.upload_file(write_h5(tmp_path / "late.h5", clips=6, seed=2), stack.input_bucket, "retry/late.h5")
    retried = cli(stack, "jobs", "retry", "to-retry")
    assert retried.returncode == 0 and "1 failed file(s) sent again" in retried.stderr, retried.stderr
    waited = cli(stack, "jobs", "status", "to-retry", "--wait", "--json")
    assert waited.returncode == 0, waited.stderr + waited.stdout
    status = json.loads(waited.stdout.splitlines()[-1])
    assert (status["scored"], status["failed"], status["pending"], status["clips"]) == (2, 0, 0, 10)
    late = store.get_bytes(stack.results_bucket, f"predictions/{stack.input_bucket}/retry/late.h5.jsonl") or b""
    assert len(late.splitlines()) == 6

    # The first attempt's message, delivered late (as after a redelivery): it names generation 0.
    jobs = open_job_store(settings.effective_state_url)
    job = next(s.id for s in jobs.list_jobs() if s.name == "to-retry")
    url = f"cos://{stack.input_bucket}/retry/late.h5"
    stale = ScoreMessage(url=url, job=job, item=url)
    make_app(settings).send_task(SCORE_TASK, args=[url], kwargs=stale.kwargs(), queue=settings.queue)
    worker.wait_for("it was sent again since", 1)
    assert jobs.status(job).scored == 2 and jobs.item_state(job, url) == ("scored", 1)

    everything = cli(stack, "jobs", "retry", "to-retry", "--all")
    assert everything.returncode == 0 and "2 file(s) sent again" in everything.stderr, everything.stderr
    final = wait_job(jobs, job)
    assert (final.scored, final.skipped, final.failed, final.clips) == (2, 0, 0, 10)  # re-scored, not skipped
    late = store.get_bytes(stack.results_bucket, f"predictions/{stack.input_bucket}/retry/late.h5.jsonl") or b""
    assert [orjson.loads(line)["index"] for line in late.splitlines()] == list(range(6))  # replaced, not appended


def test_a_jobs_manifest_lists_every_file_how_it_ended_and_where_its_results_are(stack: Stack, tmp_path: Path) -> None:
    from audioset_batch.results.job_manifest import manifest_key

    store = CosStore(stack.settings())
    for i in range(2):
        store.upload_file(write_h5(tmp_path / f"m{i}.h5", clips=3 + i, seed=i), stack.input_bucket, f"man/m{i}.h5")
    store.put_bytes(b"<script>not hdf5</script>", stack.input_bucket, "man/bad.h5")
    env = {**stack.env, "AUDIOSET_MANIFEST_INTERVAL": "0.5"}
    worker = WorkerProcess(env, tmp_path / "worker.log")
    try:
        done = cli(stack, "enqueue", f"cos://{stack.input_bucket}/man/", "--job", "with-manifest", "--wait", "--json")
        assert done.returncode == 1, done.stderr  # bad.h5 failed
        job = json.loads(done.stdout.splitlines()[-1])["id"]
        key = manifest_key("predictions/", job)
        deadline = time.monotonic() + 30
        manifest: dict[str, object] = {}
        while manifest.get("job", {}).get("state") != "finished":  # type: ignore[union-attr]
            assert time.monotonic() < deadline, f"no finished manifest at {key}: {manifest}"
            manifest = orjson.loads(store.get_bytes(stack.results_bucket, key) or b"{}")
            time.sleep(0.2)
    finally:
        worker.stop()
    assert manifest["version"] == 1 and manifest["model"] == "tiny@0"
    totals = manifest["job"]
    assert isinstance(totals, dict)
    assert (totals["id"], totals["total"], totals["scored"], totals["failed"], totals["clips"]) == (job, 3, 2, 1, 7)
    files = {f["item"].rsplit("/", 1)[1]: f for f in manifest["files"]}  # type: ignore[attr-defined]
    assert sorted(files) == ["bad.h5", "m0.h5", "m1.h5"]
    bad, good = files["bad.h5"], files["m1.h5"]
    assert (bad["status"], bad["error"], bad["results"]["jsonl"]) == ("failed", "NotHDF5Error", None)
    assert store.get_bytes(stack.results_bucket, bad["results"]["error"]) is not None
    assert (good["status"], good["clips"], good["error"]) == ("scored", 4, None)
    lines = store.get_bytes(stack.results_bucket, good["results"]["jsonl"]) or b""
    assert len(lines.splitlines()) == 4 and store.get_bytes(stack.results_bucket, good["results"]["summary"])
