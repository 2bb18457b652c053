"""Thresholds end to end: `audioset thresholds` keeps them in a model, `score --labels threshold` and a queued
worker started with AUDIOSET_LABELS=threshold use them (one setting, read the same way by both)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import orjson
import pytest

from audioset_batch.jobs.factory import open_job_store
from audioset_batch.storage.cos_store import CosStore
from model.artifact import read_manifest
from tests.conftest import Stack, WorkerProcess
from tests.helpers import wait_job, write_h5
from tests.integration.test_integration import cli

pytestmark = pytest.mark.integration


def test_thresholds_are_chosen_kept_and_used_by_score_and_by_a_queued_worker(
    stack: Stack, tiny_compiled: Path, tmp_path: Path
) -> None:
    model = tmp_path / "model"
    shutil.copytree(tiny_compiled, model)  # served without TensorFlow: each command below starts in a second
    classes = len(read_manifest(model).classes)
    held_out = write_h5(tmp_path / "held.h5", clips=60, classes=classes, seed=4)
    env = {**stack.env, "AUDIOSET_MODEL_PATH": str(model)}
    local = Stack(env, stack.input_bucket, stack.results_bucket)
    refused = cli(local, "score", str(held_out), "--labels", "threshold")
    assert (
        refused.returncode != 0 and "audioset thresholds MODEL" in refused.stderr and "Traceback" not in refused.stderr
    )

    chosen = cli(local, "thresholds", str(model), str(held_out), "--json", "--quiet")
    assert chosen.returncode == 0, chosen.stderr
    figures = json.loads(chosen.stdout)
    assert figures["clips"] == 60 and set(figures["cross_fitted"]) == {"micro", "macro"}
    values = read_manifest(model).threshold_values
    assert values is not None and len(values) == classes

    scored = cli(local, "score", str(held_out), "--labels", "threshold", "--quiet")
    assert scored.returncode == 0, scored.stderr
    for line in scored.stdout.splitlines():
        record = orjson.loads(line)
        assert all(label["score"] >= values[label["index"]] for label in record["labels"])

    worker = WorkerProcess({**env, "AUDIOSET_LABELS": "threshold"}, tmp_path / "worker.log")
    try:
        store = CosStore(stack.settings())
        store.upload_file(held_out, stack.input_bucket, "thr/held.h5")
        queued = cli(local, "enqueue", f"cos://{stack.input_bucket}/thr/held.h5", "--json")
        job = json.loads(queued.stdout)["job"]
        assert wait_job(open_job_store(stack.settings().effective_state_url), job).scored == 1, worker.text()[-3000:]
    finally:
        worker.stop()
    base = f"predictions/{stack.input_bucket}/thr/held.h5"
    summary = orjson.loads(store.get_bytes(stack.results_bucket, base + ".summary.json") or b"{}")
    assert summary["labels"] == "threshold" and summary["thresholds"]
    queued_labels = [
        orjson.loads(line)["labels"]
        for line in (store.get_bytes(stack.results_bucket, base + ".jsonl") or b"").splitlines()
    ]
    in_process = [orjson.loads(line)["labels"] for line in scored.stdout.splitlines()]
    assert queued_labels == in_process and any(queued_labels)  # the worker and `score` decide alike
