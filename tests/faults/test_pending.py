"""Nothing stays pending forever: each way a file used to be left `pending`, end to end or at its branch."""

from __future__ import annotations

import errno
import json
import re
import resource
import shutil
import subprocess
import time
import zipfile
from pathlib import Path

import numpy as np
import orjson
import pytest

from audioset_batch.errors import AccessDeniedError, InvalidObjectKeyError, TransientStorageError
from audioset_batch.jobs.factory import open_job_store
from audioset_batch.scoring.pipeline import ObjectScorer
from audioset_batch.settings import load_settings
from audioset_batch.storage.cos_store import CosStore
from audioset_batch.storage.local_store import LocalStore
from audioset_batch.storage.object_store import ObjectURL, translate_os_error
from model.artifact import MANIFEST_NAME, sha256_file, verify
from model.artifact_errors import ArtifactError, UnsafeArtifactError
from model.keras_archive import check_archive
from tests.conftest import ROOT, Stack, WorkerProcess, cos_env
from tests.faults.conftest import check
from tests.helpers import make_labels, wait_job, write_h5
from worker.app import make_app
from worker.config import worker_command


def start_worker_expecting_exit(env: dict[str, str], log: Path, timeout: float = 120) -> tuple[int, str]:
    import os

    process = subprocess.Popen(
        worker_command(1, env["AUDIOSET_QUEUE"], "INFO", "--without-gossip", "--without-mingle"),
        env={**os.environ, **env},
        cwd=ROOT,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        code = process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        code = -999
    return code, log.read_text(errors="replace")


@pytest.mark.integration
@pytest.mark.parametrize("tampered", ["model.keras", "model.int8.tflite"])
def test_a_worker_whose_model_fails_its_check_never_starts(
    stack: Stack, tiny_model: Path, tmp_path: Path, tampered: str
) -> None:
    """Each file the worker could load is checked in the parent before forking: the weights, and the compiled
    form a child would serve instead of them."""
    from model.form_builder import add_forms

    broken = tmp_path / "broken"
    shutil.copytree(tiny_model, broken)
    add_forms(broken)
    with (broken / tampered).open("ab") as fh:
        fh.write(b"tampered")
    env = {**stack.env, "AUDIOSET_MODEL_PATH": str(broken), "AUDIOSET_PRECISION": "auto"}
    code, text = start_worker_expecting_exit(env, tmp_path / "w.log")
    assert code != 0 and " ready." not in text
    assert "cannot start: the model at AUDIOSET_MODEL_PATH" in text and "sha256" in text and tampered in text
    check(f"worker start with a tampered {tampered}", "exits, never ready", "exits, never ready")


@pytest.mark.integration
def test_a_worker_whose_model_fails_to_load_in_its_child_stops(stack: Stack, tiny_model: Path, tmp_path: Path) -> None:
    """The artifact passes every check without TensorFlow, then fails to load in the child (wrong class count)."""
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model, broken)
    manifest = json.loads((broken / MANIFEST_NAME).read_text())
    manifest["classes"] = manifest["classes"][:3]
    (broken / MANIFEST_NAME).write_text(json.dumps(manifest))
    code, text = start_worker_expecting_exit({**stack.env, "AUDIOSET_MODEL_PATH": str(broken)}, tmp_path / "w.log")
    assert code != -999, "the worker kept running without a model"
    assert code != 0, "a worker that could not load its model exited 0, as if all were well"
    assert "cannot start: the model failed to load in a worker process" in text
    assert "model outputs" in text
    check("model that fails to load in the worker child", "worker stops", "worker stops")


def _resign(artifact: Path, members: dict[str, bytes], compress: dict[str, int] | None = None) -> None:
    """Rewrite model.keras with these members and re-sign the manifest, as an attacker with write access would."""
    weights = artifact / "model.keras"
    with zipfile.ZipFile(weights, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data, compress_type=(compress or {}).get(name, zipfile.ZIP_STORED))
    manifest = json.loads((artifact / MANIFEST_NAME).read_text())
    manifest["sha256"] = sha256_file(weights)
    (artifact / MANIFEST_NAME).write_text(json.dumps(manifest))


def test_a_zip_bomb_model_is_refused_in_bounded_memory(tiny_model: Path, tmp_path: Path) -> None:
    """A 300 KB model.keras holding a 300 MB weights member: check_archive read it whole (and a 1.5 GB one
    raised a raw OSError that skipped the worker's pre-fork check)."""
    bomb = tmp_path / "bomb"
    shutil.copytree(tiny_model, bomb)
    with zipfile.ZipFile(bomb / "model.keras") as archive:
        members = {name: archive.read(name) for name in ("metadata.json", "config.json")}
    members["model.weights.h5"] = bytes(300 * 1024**2)
    _resign(bomb, members, {"model.weights.h5": zipfile.ZIP_DEFLATED})
    assert (bomb / "model.keras").stat().st_size < 2 * 1024**2
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(UnsafeArtifactError, match="possible zip bomb"):
        check_archive(bomb / "model.keras", verify(bomb).frames)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100 * 1024  # KiB: nothing expanded
    check("model.keras zip bomb (300 MB in 300 KB)", "UnsafeArtifactError", "UnsafeArtifactError")


def test_manifest_frames_must_match_the_model_before_any_worker_starts(tiny_model: Path, tmp_path: Path) -> None:
    """frames 0 or 5 in the manifest loaded, and then every file failed."""
    for frames, error in ((5, "the model takes input [None, 10, 128]"), (0, "is not a frame count")):
        wrong = tmp_path / f"frames{frames}"
        shutil.copytree(tiny_model, wrong)
        manifest = json.loads((wrong / MANIFEST_NAME).read_text())
        manifest["frames"] = frames
        (wrong / MANIFEST_NAME).write_text(json.dumps(manifest))
        with pytest.raises(ArtifactError, match=re.escape(error)):
            check_archive(wrong / "model.keras", verify(wrong).frames)
        check(f"manifest frames={frames} for a 10-frame model", "ArtifactError", "ArtifactError")


@pytest.mark.integration
def test_a_task_killed_at_the_hard_time_limit_ends_with_a_record_and_a_failed_item(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Celery calls the task's on_failure in the worker's main process when it kills a child at the hard limit."""
    from celery.exceptions import TimeLimitExceeded

    for name, value in stack.env.items():
        monkeypatch.setenv(name, value)
    from audioset_batch.settings import get_settings

    get_settings.cache_clear()
    try:
        from worker.tasks import score_object

        store = CosStore(stack.settings())
        store.upload_file(write_h5(tmp_path / "a.h5", clips=2), stack.input_bucket, "hard/a.h5")
        jobs = open_job_store(stack.settings().effective_state_url)
        job = jobs.create_job(name="hard")
        url = f"cos://{stack.input_bucket}/hard/a.h5"
        jobs.add_items(job, [url])
        score_object.on_failure(TimeLimitExceeded(3660), "task-1", [url], {"job": job, "item": url}, None)
    finally:
        get_settings.cache_clear()
    record = orjson.loads(
        store.get_bytes(stack.results_bucket, f"predictions/{stack.input_bucket}/hard/a.h5.error.json") or b"{}"
    )
    assert record["error"] == "LimitExceededError" and "AUDIOSET_TIME_LIMIT" in record["message"]
    assert jobs.status(job).failed == 1 and jobs.status(job).pending == 0
    check("task killed at the hard time limit", "error record, failed", "error record, failed")


def test_a_key_too_long_for_the_local_disk_fails_instead_of_staying_pending(tmp_path: Path) -> None:
    root = tmp_path / "buckets"
    key = "a" * 246 + ".h5"  # fine as an input name; its result names (+ .summary.json) are not
    write_h5(root / "incoming" / key, clips=2)
    settings = load_settings(local_root=root, results_bucket="results")
    scorer = ObjectScorer(settings, lambda x: np.full((len(x), 3), 0.5, np.float32), make_labels(3), "m@1", 10)
    outcome = scorer.score(ObjectURL("file", "incoming", key))
    assert outcome.status == "failed" and outcome.error == "InvalidObjectKeyError"
    assert check("246-character file name, folder buckets", "failed", outcome.status).ok
    with pytest.raises(InvalidObjectKeyError, match="too long"):
        LocalStore(root).get_bytes("results", "predictions/" + key + ".summary.json")


def test_a_full_disk_is_transient_and_other_os_errors_are_final() -> None:
    with pytest.raises(OSError) as info, open("/dev/full", "wb") as full:
        full.write(b"x")
        full.flush()
    assert info.value.errno == errno.ENOSPC
    assert isinstance(translate_os_error(info.value, "file://results/x"), TransientStorageError)
    assert check(
        "disk full while writing", "TransientStorageError", type(translate_os_error(info.value, "x")).__name__
    ).ok
    assert isinstance(translate_os_error(PermissionError(errno.EACCES, "denied"), "x"), AccessDeniedError)


@pytest.mark.integration
def test_a_worker_without_credentials_fails_each_file_with_a_hint(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = CosStore(stack.settings())
    store.upload_file(write_h5(tmp_path / "a.h5", clips=2), stack.input_bucket, "nocred/a.h5")
    env = {k: v for k, v in stack.env.items() if k not in cos_env("x")} | {
        "AUDIOSET_COS_ENDPOINT": stack.env["AUDIOSET_COS_ENDPOINT"],
        "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
        "AWS_CONFIG_FILE": str(tmp_path / "none"),
    }
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    worker = WorkerProcess(env, tmp_path / "w.log")
    try:
        settings = stack.settings()
        app, jobs = make_app(settings), open_job_store(settings.effective_state_url)
        job = jobs.create_job("nocred")
        url = f"cos://{stack.input_bucket}/nocred/a.h5"
        jobs.add_items(job, [url])
        started = time.monotonic()
        app.send_task("audioset.score_object", args=[url], kwargs={"job": job}, queue=settings.queue)
        status = wait_job(jobs, job, 120)
    finally:
        worker.stop()
    assert status.failed == 1 and status.pending == 0
    assert time.monotonic() - started < 60  # no retry storm: a missing credential is not transient
    assert "AUDIOSET_COS_ACCESS_KEY_ID" in worker.text() and "retrying in" not in worker.text()
    check("worker with no COS credentials", "failed, not pending", "failed, not pending")


@pytest.mark.integration
def test_results_of_different_buckets_never_replace_each_other(
    stack: Stack, worker: WorkerProcess, tmp_path: Path
) -> None:
    store = CosStore(stack.settings())
    store.upload_file(write_h5(tmp_path / "v.h5", clips=3), stack.input_bucket, "victim.h5")
    settings = stack.settings()
    app, jobs = make_app(settings), open_job_store(settings.effective_state_url)
    job = jobs.create_job("collide")
    urls = [f"cos://{stack.input_bucket}/victim.h5", f"cos://no-such-bucket-{stack.input_bucket}/victim.h5"]
    for url in urls:  # in order: the real file first, then the notification that used to replace its results
        jobs.add_items(job, [url])
        app.send_task("audioset.score_object", args=[url], kwargs={"job": job}, queue=settings.queue)
        wait_job(jobs, job, 60)
    own = f"predictions/{stack.input_bucket}/victim.h5"
    assert len((store.get_bytes(stack.results_bucket, own + ".jsonl") or b"").splitlines()) == 3
    assert store.get_bytes(stack.results_bucket, own + ".summary.json") is not None
    assert store.get_bytes(stack.results_bucket, own + ".error.json") is None
    other = orjson.loads(
        store.get_bytes(stack.results_bucket, f"predictions/no-such-bucket-{stack.input_bucket}/victim.h5.error.json")
        or b"{}"
    )
    assert other["error"] == "ObjectNotFoundError"
    check("same key in another (missing) bucket", "both kept apart", "both kept apart")
