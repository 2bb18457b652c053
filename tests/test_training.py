from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from model import artifact
from model.training import Progress, TrainConfig, TrainingDataError, train
from tests.helpers import learnable_dataset, make_labels


def small_config(**overrides: object) -> TrainConfig:
    base = {
        "architecture": "decision_level_multi_attention",
        "batch_size": 64,
        "iterations": 80,
        "hidden_units": 64,
        "dropout": 0.2,
        "eval_every": 20,
        "checkpoint_every": 20,
        "seed": 3,
    }
    base.update(overrides)
    return TrainConfig(**base)  # type: ignore[arg-type]


def test_training_learns_a_learnable_signal(tmp_path: Path) -> None:
    x, y = learnable_dataset(800, 6, seed=0)
    chance = y.mean()
    result = train(small_config(), x, y, make_labels(6), tmp_path / "run")
    assert result.best_map > max(0.7, 2 * chance)
    assert result.history[0]["iteration"] == 20 and len(result.history) == 4
    manifest = artifact.verify(result.artifact)
    assert manifest.metrics["validation"]["mAP"] == pytest.approx(result.best_map)
    assert manifest.training["best_iteration"] == result.best_iteration
    assert manifest.training["hyperparameters"]["batch_size"] == 64
    assert len(manifest.training["data_fingerprint"]) == 16


def test_training_resumes_after_interruption(tmp_path: Path) -> None:
    x, y = learnable_dataset(400, 4, seed=1)
    seen: list[int] = []

    def interrupt(p: Progress) -> None:
        seen.append(p.iteration)
        if p.iteration == 30:
            raise KeyboardInterrupt

    config = small_config(iterations=60)
    with pytest.raises(KeyboardInterrupt):
        train(config, x, y, make_labels(4), tmp_path / "run", on_progress=interrupt)
    state = json.loads((tmp_path / "run" / "checkpoint" / "state.json").read_text())
    assert state["iteration"] == 20

    resumed: list[int] = []
    result = train(config, x, y, make_labels(4), tmp_path / "run", on_progress=lambda p: resumed.append(p.iteration))
    assert resumed[0] == 21 and resumed[-1] == 60
    assert [h["iteration"] for h in result.history] == [20, 40, 60]


def test_resume_refuses_other_settings(tmp_path: Path) -> None:
    x, y = learnable_dataset(200, 3, seed=2)
    train(small_config(iterations=20), x, y, make_labels(3), tmp_path / "run")
    with pytest.raises(TrainingDataError, match="other data or settings"):
        train(small_config(iterations=20, learning_rate=0.1), x, y, make_labels(3), tmp_path / "run")


def test_label_count_must_match(tmp_path: Path) -> None:
    x, y = learnable_dataset(50, 3)
    with pytest.raises(TrainingDataError, match="label list has 2"):
        train(small_config(), x, y, make_labels(2), tmp_path / "run")


def test_shuffle_sampling_also_trains(tmp_path: Path) -> None:
    x, y = learnable_dataset(300, 3, seed=4)
    result = train(small_config(balanced=False, iterations=40), x, y, make_labels(3), tmp_path / "run")
    assert result.best_map > 0.5
    assert np.isfinite(result.history[-1]["loss"])


@pytest.mark.integration
def test_queued_training_run_is_listed_monitored_and_publishes_its_artifact(stack, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import os
    import subprocess
    import sys

    import h5py

    from audioset_batch.object_store import CosStore
    from tests.conftest import ROOT, WorkerProcess

    settings = stack.settings()
    store = CosStore(settings)
    x, y = learnable_dataset(300, 3, seed=5)
    with h5py.File(tmp_path / "train.h5", "w") as f:
        f["x"], f["y"] = x, y
    store.upload_file(tmp_path / "train.h5", stack.input_bucket, "training/train.h5")
    labels = tmp_path / "labels.csv"
    labels.write_text("index,mid,display_name\n0,/x/a,Alpha\n1,/x/b,Beta\n2,/x/c,Gamma\n")
    spec = tmp_path / "run.yml"
    spec.write_text(
        f"data: [cos://{stack.input_bucket}/training/train.h5]\n"
        f"labels: {labels}\n"
        f"output: cos://{stack.results_bucket}/runs/\n"
        "architecture: feature_level_attention\niterations: 40\nbatch_size: 32\nhidden_units: 32\n"
        "eval_every: 20\ncheckpoint_every: 20\nname: queued-model\n"
    )
    env = {**os.environ, **stack.env, "AUDIOSET_LOCAL_ROOT": str(tmp_path / "local")}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "audioset_batch.cli", *args],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )

    bad = tmp_path / "bad.yml"
    bad.write_text("data: [x.h5]\nlearning_rat: 0.1\n")
    refused = cli("train", "--submit", str(bad))
    assert refused.returncode == 2 and "unknown keys ['learning_rat']" in refused.stderr

    submitted = cli("train", "--submit", str(spec))
    assert submitted.returncode == 0, submitted.stderr
    run_id = submitted.stdout.strip()
    assert run_id.startswith("train-") and "queued" in cli("training", "list").stdout

    worker = WorkerProcess(
        {**stack.env, "AUDIOSET_LOCAL_ROOT": str(tmp_path / "local")}, tmp_path / "w.log", queues="training"
    )
    try:
        monitored = cli("training", "monitor", run_id, "--interval", "0.5")
    finally:
        worker.stop()
    assert monitored.returncode == 0, monitored.stdout + monitored.stderr + worker.text()[-3000:]
    shown = json.loads(cli("training", "show", run_id).stdout)
    assert shown["status"] == "completed" and shown["iteration"] == 40 and shown["best_map"] > 0.4
    prefix = f"runs/{run_id}/models/queued-model/"
    assert shown["artifact"] == f"cos://{stack.results_bucket}/{prefix}"
    manifest = json.loads(store.get_bytes(stack.results_bucket, prefix + "manifest.json") or b"{}")
    assert [c["name"] for c in manifest["classes"]] == ["Alpha", "Beta", "Gamma"]
    assert store.get_bytes(stack.results_bucket, prefix + "model.keras")
