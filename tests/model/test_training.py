from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from model import artifact
from model.augmentation import frame_mix_batch, mix_batch, smooth_labels
from model.labels import ClassLabel
from model.lr_schedule import COSINE_FLOOR, learning_rate_at
from model.soft_targets import stratified_folds
from model.train_config import TrainConfig, TrainConfigError, TrainingDataError
from model.training import Progress, train
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
        "compile_forms": False,  # compiling is tested where a test asks for it (its gate, below)
    }
    base.update(overrides)
    return TrainConfig(**base)  # type: ignore[arg-type]


def train_until_interrupted(
    config: TrainConfig, x: np.ndarray, y: np.ndarray, labels: list[ClassLabel], run: Path, at: int
) -> None:
    """Train until iteration ``at`` is reported, then stop as Ctrl-C would."""

    def interrupt(p: Progress) -> None:
        if p.iteration == at:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config, x, y, labels, run, on_progress=interrupt)


def out_of_fold_scores(config: TrainConfig, y: np.ndarray, run: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(training clip indices, their fold, the fold predictions a cross-fit run saved) of a split run."""
    from model.sampling import stratified_split

    train_idx, _ = stratified_split(y, *config.validation_split)
    fold_of = stratified_folds(y[train_idx], config.cross_fit, config.seed)
    soft = np.zeros((len(train_idx), y.shape[1]), dtype=np.float32)
    for fold in range(config.cross_fit):
        with np.load(run / "folds" / f"fold-{fold}" / "predictions.npz") as saved:
            soft[fold_of == fold] = saved["held"]
    return train_idx, fold_of, soft


def test_training_learns_a_learnable_signal(tmp_path: Path) -> None:
    x, y = learnable_dataset(800, 6, seed=0)
    chance = y.mean()
    result = train(small_config(compile_forms=True), x, y, make_labels(6), tmp_path / "run")
    assert result.best_map > max(0.7, 2 * chance)
    assert result.history[0]["iteration"] == 20 and len(result.history) == 4
    manifest = artifact.verify(result.artifact)
    assert manifest.metrics["validation"]["mAP"] == pytest.approx(result.best_map)
    assert manifest.training["best_iteration"] == result.best_iteration
    assert manifest.training["hyperparameters"]["batch_size"] == 64
    assert len(manifest.training["data_fingerprint"]) == 16
    gate = manifest.compiled["int8"]["gate"]  # the serving form is compiled and gated on the validation clips
    assert gate["clips"] == manifest.training["validation_clips"] and gate["float32_map"] == pytest.approx(
        result.best_map, abs=1e-4
    )


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


def test_branched_training_learns_resumes_and_serves_the_mean(tmp_path: Path) -> None:
    import keras

    from model.architectures import branch_count, branch_outputs
    from model.inference import Predictor

    x, y = learnable_dataset(600, 4, seed=5)
    config = small_config(architecture="feature_level_attention", branches=2, iterations=60, hidden_units=32)

    train_until_interrupted(config, x, y, make_labels(4), tmp_path / "run", at=30)
    result = train(config, x, y, make_labels(4), tmp_path / "run")
    assert result.best_map > 0.7
    assert [h["iteration"] for h in result.history] == [20, 40, 60]
    net, manifest = artifact.load(result.artifact)
    assert manifest.branches == 2 and branch_count(net) == 2
    assert manifest.training["hyperparameters"]["branches"] == 2
    # The served prediction is the mean of the two branches, and each branch learnt on its own.
    sample = x[:50]
    served = Predictor.from_artifact(result.artifact).predict(sample)
    from model.inference import dequantize

    per_branch = keras.Model(net.inputs[0], branch_outputs(net))
    branches = [np.asarray(o) for o in per_branch(dequantize(sample), training=False)]
    np.testing.assert_allclose(served, np.mean(branches, axis=0), rtol=1e-4, atol=1e-5)
    from model.metrics import evaluate

    for branch in branches:
        assert evaluate(np.asarray(y[:50], dtype=bool), branch).mean_average_precision > 0.6


def test_weight_average_is_evaluated_saved_and_resumed(tmp_path: Path) -> None:
    x, y = learnable_dataset(500, 4, seed=6)
    config = small_config(architecture="feature_level_attention", ema_decay=0.9, iterations=60)

    train_until_interrupted(config, x, y, make_labels(4), tmp_path / "run", at=50)
    saved = np.load(tmp_path / "run" / "checkpoint" / "ema.npz")
    assert int(saved["step"]) == 40  # written with the iteration-40 checkpoint
    result = train(config, x, y, make_labels(4), tmp_path / "run")
    assert result.best_map > 0.7
    assert artifact.verify(result.artifact).training["hyperparameters"]["ema_decay"] == 0.9


def test_weight_average_tracks_and_swaps() -> None:
    import keras

    from model.weight_average import WeightAverage

    variable = keras.Variable(np.zeros(3, np.float32))
    average = WeightAverage([variable], decay=0.5, step=100)
    variable.assign(np.full(3, 4.0, np.float32))
    average.update()  # 0 + 0.5 * (4 - 0)
    np.testing.assert_allclose(average.values[0], 2.0)
    average.swap()
    np.testing.assert_allclose(variable.numpy(), 2.0)
    average.swap()
    np.testing.assert_allclose(variable.numpy(), 4.0)


def test_distillation_learns_from_the_teachers_soft_targets(tmp_path: Path) -> None:
    x, y = learnable_dataset(800, 5, seed=7)
    teacher = train(small_config(), x, y, make_labels(5), tmp_path / "teacher")
    # distill_weight=1: the labels are ignored, so everything the student learns comes from the teacher.
    student_config = small_config(teachers=[str(teacher.artifact)], distill_weight=1.0, seed=3)
    student = train(student_config, x, y, make_labels(5), tmp_path / "student")
    assert student.best_map > max(0.8, 2 * y.mean())
    recorded = artifact.verify(student.artifact).training["teachers"]
    assert recorded == [{"model": "audioset-model@1", "sha256": artifact.read_manifest(teacher.artifact).sha256}]


def test_a_teacher_that_saw_the_validation_clips_is_refused(tmp_path: Path) -> None:
    x, y = learnable_dataset(300, 3, seed=8)
    teacher = train(small_config(iterations=20, seed=1), x, y, make_labels(3), tmp_path / "teacher")
    with pytest.raises(TrainingDataError, match="another validation split"):
        train(small_config(teachers=[str(teacher.artifact)], seed=2), x, y, make_labels(3), tmp_path / "student")
    with pytest.raises(TrainingDataError, match="predicts 3 classes"):
        x4, y4 = learnable_dataset(300, 4, seed=8)
        train(small_config(teachers=[str(teacher.artifact)]), x4, y4, make_labels(4), tmp_path / "other")


def test_resume_refuses_other_settings(tmp_path: Path) -> None:
    x, y = learnable_dataset(200, 3, seed=2)
    train(small_config(iterations=20), x, y, make_labels(3), tmp_path / "run")
    with pytest.raises(TrainingDataError, match="other data or settings"):
        train(small_config(iterations=20, learning_rate=0.1), x, y, make_labels(3), tmp_path / "run")


def test_a_run_saved_before_a_setting_existed_resumes_with_its_default(tmp_path: Path) -> None:
    x, y = learnable_dataset(200, 3, seed=2)
    train(small_config(iterations=20), x, y, make_labels(3), tmp_path / "run")
    state_path = tmp_path / "run" / "checkpoint" / "state.json"
    state = json.loads(state_path.read_text())
    for newer in ("mixup", "label_smoothing", "lr_schedule", "frame_mix", "frame_mix_targets", "weight_decay"):
        del state["config"][newer]
    state_path.write_text(json.dumps(state))
    assert train(small_config(iterations=40), x, y, make_labels(3), tmp_path / "run").iterations_run == 40
    with pytest.raises(TrainingDataError, match="other data or settings"):
        train(small_config(iterations=60, mixup=0.2), x, y, make_labels(3), tmp_path / "run")


def test_early_stopping_ends_at_the_first_stall_of_patience_evaluations(tmp_path: Path) -> None:
    x, y = learnable_dataset(400, 3, seed=6)
    result = train(small_config(iterations=2000, eval_every=10, patience=2), x, y, make_labels(3), tmp_path / "run")
    maps = [h["validation_map"] for h in result.history]
    assert result.stopped_early and result.iterations_run == 10 * len(maps) < 2000
    best = maps.index(max(maps))
    assert len(maps) == best + 3 and max(maps[best + 1 :]) <= maps[best]  # two evaluations without a better mAP
    run_without_gain = 0
    for i in range(1, best + 1):  # it did not stop earlier: no two non-improving evaluations in a row before the best
        run_without_gain = run_without_gain + 1 if maps[i] <= max(maps[:i]) else 0
        assert run_without_gain < 2
    manifest = artifact.verify(result.artifact)
    assert manifest.training["stopped_early"] is True and manifest.training["iterations_run"] == result.iterations_run
    assert manifest.training["best_iteration"] == result.best_iteration == 10 * (best + 1)


def test_a_finished_run_can_be_extended_or_finished_now(tmp_path: Path) -> None:
    x, y = learnable_dataset(300, 3, seed=7)
    first = train(small_config(iterations=40), x, y, make_labels(3), tmp_path / "run")
    assert [h["iteration"] for h in first.history] == [20, 40]
    extended = train(small_config(iterations=80), x, y, make_labels(3), tmp_path / "run")
    assert [h["iteration"] for h in extended.history] == [20, 40, 60, 80] and extended.iterations_run == 80
    assert extended.best_map >= first.best_map
    assert artifact.verify(extended.artifact).compiled == {}  # --forms skip: Keras only
    # Asking for fewer iterations than already run trains no more and publishes the best checkpoint so far, here
    # with its compiled forms (the weights do not depend on them, so the run may change its mind).
    now = train(small_config(iterations=50, compile_forms=True), x, y, make_labels(3), tmp_path / "run")
    assert now.iterations_run == 80 and now.best_iteration == extended.best_iteration
    assert now.best_map == pytest.approx(extended.best_map)
    assert sorted(artifact.verify(now.artifact).compiled) == ["bfloat16", "int8"]


def test_label_count_must_match(tmp_path: Path) -> None:
    x, y = learnable_dataset(50, 3)
    with pytest.raises(TrainingDataError, match="labelled with 3 classes, the class list names 2"):
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

    from audioset_batch.storage.cos_store import CosStore
    from tests.conftest import ROOT, WorkerProcess

    settings = stack.settings()
    store = CosStore(settings)
    x, y = learnable_dataset(300, 3, seed=5)
    with h5py.File(tmp_path / "train.h5", "w") as f:
        f["x"], f["y"] = x, y
    store.upload_file(tmp_path / "train.h5", stack.input_bucket, "training/train.h5")
    (tmp_path / "local").mkdir()
    labels = tmp_path / "local" / "labels.csv"  # a queued run reads local files only under AUDIOSET_LOCAL_ROOT
    labels.write_text("index,mid,display_name\n0,/x/a,Alpha\n1,/x/b,Beta\n2,/x/c,Gamma\n")
    spec = tmp_path / "run.yml"
    spec.write_text(
        f"data: [cos://{stack.input_bucket}/training/train.h5]\n"
        f"labels: {labels}\n"
        f"output: cos://{stack.results_bucket}/runs/\n"
        "architecture: feature_level_attention\niterations: 40\nbatch_size: 32\nhidden_units: 32\n"
        "eval_every: 20\ncheckpoint_every: 20\nname: queued-model\ncompile_forms: false\n"
    )
    env = {**os.environ, **stack.env, "AUDIOSET_LOCAL_ROOT": str(tmp_path / "local")}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "cli", *args],
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
    assert manifest["training"]["data"] == f"cos://{stack.input_bucket}/training/train.h5"  # a bucket URL, whole
    assert store.get_bytes(stack.results_bucket, prefix + "model.keras")
    assert "compiled" not in manifest and manifest["training"]["hyperparameters"]["compile_forms"] is False


def test_cosine_schedule_decays_from_the_base_rate_to_the_floor() -> None:
    assert learning_rate_at(1e-3, "constant", 700, 1000) == 1e-3
    assert learning_rate_at(1e-3, "cosine", 0, 1000) == pytest.approx(1e-3)
    assert learning_rate_at(1e-3, "cosine", 500, 1000) == pytest.approx((1e-3 + COSINE_FLOOR * 1e-3) / 2)
    assert learning_rate_at(1e-3, "cosine", 1000, 1000) == pytest.approx(COSINE_FLOOR * 1e-3)
    rates = [learning_rate_at(1e-3, "cosine", i, 1000) for i in range(0, 1001, 50)]
    assert all(a > b for a, b in itertools.pairwise(rates))
    with pytest.raises(ValueError, match="unknown learning-rate schedule"):
        learning_rate_at(1e-3, "step", 1, 10)


def test_label_smoothing_pulls_targets_towards_one_half() -> None:
    np.testing.assert_allclose(smooth_labels(np.array([[1.0, 0.0, 0.5]]), 0.2), [[0.9, 0.1, 0.5]])


def test_mixup_blends_each_clip_with_a_partner_and_mixes_its_targets_alike() -> None:
    n = 64
    x = np.repeat(np.arange(n, dtype=np.float32)[:, None, None], 10, axis=1).repeat(128, axis=2)
    y = np.eye(n, dtype=np.float32)  # clip i is class i, so a mixed target shows exactly who was mixed, and how much
    mixed_x, mixed_y = mix_batch(x, y, 0.4, np.random.default_rng(0))
    assert mixed_x.shape == x.shape and mixed_y.shape == y.shape and mixed_x.dtype == np.float32
    np.testing.assert_allclose(mixed_y.sum(axis=1), 1.0, rtol=1e-6)
    own = mixed_y[np.arange(n), np.arange(n)]
    assert (own >= 0.5 - 1e-6).all() and (own < 1.0).sum() > n // 2  # each clip stays dominant; most are mixed
    # The embeddings are blended with the same weights as the targets.
    np.testing.assert_allclose(mixed_x[:, 0, 0], mixed_y @ np.arange(n, dtype=np.float32), rtol=1e-5)


def test_frame_mix_splices_partner_frames_and_blends_targets_by_their_share() -> None:
    n, frames = 200, 10
    x = np.repeat(np.arange(n, dtype=np.float32)[:, None, None], frames, axis=1).repeat(128, axis=2)
    y = np.eye(n, dtype=np.float32)  # clip i is class i: a target shows who gave frames, and how many
    mixed_x, mixed_y = frame_mix_batch(x, y, 0.5, np.random.default_rng(0))
    assert mixed_x.shape == x.shape and mixed_x.dtype == mixed_y.dtype == np.float32
    source = mixed_x[:, :, 0].astype(int)  # which clip each frame came from
    assert (mixed_x == mixed_x[:, :, :1]).all()  # whole frames move, never parts of one
    for i in range(n):
        own = source[i] == i
        given = frames - own.sum()
        assert given <= 5  # at most half of the frames come from elsewhere
        partners = set(source[i][~own].tolist())
        assert len(partners) <= 1  # from one partner
        if partners:
            (j,) = partners
            assert mixed_y[i, i] == pytest.approx(1 - given / frames) and mixed_y[i, j] == pytest.approx(given / frames)
    taken = (source != np.arange(n)[:, None]).sum(axis=1)
    assert set(taken.tolist()) == {0, 1, 2, 3, 4, 5}  # every share from none to half occurs
    np.testing.assert_allclose(mixed_y.sum(axis=1), 1.0, rtol=1e-6)


def test_frame_mix_union_targets_hold_both_label_sets() -> None:
    n = 50
    x = np.repeat(np.arange(n, dtype=np.float32)[:, None, None], 10, axis=1).repeat(128, axis=2)
    y = np.eye(n, dtype=np.float32)
    mixed_x, mixed_y = frame_mix_batch(x, y, 0.3, np.random.default_rng(1), union=True)
    for i in range(n):
        sources = set(mixed_x[i, :, 0].astype(int).tolist())
        assert set(np.flatnonzero(mixed_y[i]).tolist()) == sources and (mixed_y[i][list(sources)] == 1).all()


def test_frame_mix_trains_and_is_recorded(tmp_path: Path) -> None:
    x, y = learnable_dataset(600, 4, seed=12)
    config = small_config(architecture="feature_level_attention", iterations=60, frame_mix=0.3)
    result = train(config, x, y, make_labels(4), tmp_path / "run")
    assert result.best_map > 0.7
    hyperparameters = artifact.verify(result.artifact).training["hyperparameters"]
    assert (hyperparameters["frame_mix"], hyperparameters["frame_mix_targets"]) == (0.3, "share")


def test_weight_decay_shrinks_the_weights_and_survives_a_resume(tmp_path: Path) -> None:
    import keras

    x, y = learnable_dataset(400, 3, seed=13)

    def output_norm(run: Path) -> float:
        model = keras.models.load_model(run / "checkpoint" / "last.keras", safe_mode=True)
        return float(np.linalg.norm(model.get_layer("fusion").get_weights()[0]))

    train(small_config(iterations=40), x, y, make_labels(3), tmp_path / "plain")
    decayed = train(small_config(iterations=40, weight_decay=5.0), x, y, make_labels(3), tmp_path / "decayed")
    assert output_norm(tmp_path / "decayed") < 0.9 * output_norm(tmp_path / "plain")
    assert artifact.verify(decayed.artifact).training["hyperparameters"]["weight_decay"] == 5.0
    resumed = keras.models.load_model(tmp_path / "decayed" / "checkpoint" / "last.keras", safe_mode=True)
    assert resumed.optimizer.weight_decay == pytest.approx(5.0)  # a resumed run goes on decaying alike


def test_bfloat16_training_learns_resumes_and_ships_a_float32_artifact(tmp_path: Path) -> None:
    import keras

    from model.inference import Predictor
    from model.metrics import evaluate
    from model.sampling import stratified_split

    x, y = learnable_dataset(800, 6, seed=21)
    config = small_config(iterations=60, precision="bfloat16", ema_decay=0.9)

    train_until_interrupted(config, x, y, make_labels(6), tmp_path / "run", at=30)
    checkpoint = keras.models.load_model(tmp_path / "run" / "checkpoint" / "last.keras", safe_mode=True)
    assert checkpoint.get_layer("block1_dense").compute_dtype == "bfloat16"
    assert checkpoint.get_layer("block1_dense").kernel.dtype == "float32"  # mixed precision: weights stay float32

    result = train(config, x, y, make_labels(6), tmp_path / "run")
    assert [h["iteration"] for h in result.history] == [20, 40, 60]
    assert result.best_map > 0.7
    predictor = Predictor.from_artifact(result.artifact)
    served = keras.models.load_model(result.artifact / "model.keras", safe_mode=True)
    assert {layer.compute_dtype for layer in served.layers if layer.name != "embeddings"} == {"float32"}
    # The recorded mAP is the float32 artifact's own on the validation split, not a bfloat16 reading.
    _, val_idx = stratified_split(y, *config.validation_split)
    recomputed = evaluate(y[val_idx].astype(bool), predictor.predict(x[val_idx])).mean_average_precision
    assert recomputed == pytest.approx(result.best_map, abs=1e-6)
    assert predictor.manifest.training["hyperparameters"]["precision"] == "bfloat16"


def test_training_options_are_checked_when_the_config_is_made() -> None:
    with pytest.raises(TrainConfigError, match="precision must be one of float32, bfloat16"):
        TrainConfig(precision="int8")
    with pytest.raises(TrainConfigError, match="lr_schedule"):
        TrainConfig(lr_schedule="step")
    with pytest.raises(TrainConfigError, match="mixup"):
        TrainConfig(mixup=-0.1)
    with pytest.raises(TrainConfigError, match="label_smoothing"):
        TrainConfig(label_smoothing=1.0)
    with pytest.raises(TrainConfigError, match="weight_decay"):
        TrainConfig(weight_decay=-1.0)
    with pytest.raises(TrainConfigError, match="frame_mix must be in"):
        TrainConfig(frame_mix=1.5)
    with pytest.raises(TrainConfigError, match="frame_mix_targets"):
        TrainConfig(frame_mix_targets="max")
    with pytest.raises(TrainConfigError, match="loss must be one of binary_crossentropy, asymmetric"):
        TrainConfig(loss="focal")
    with pytest.raises(TrainConfigError, match=r"negative_clip must be in \[0, 1\), got 1.0"):
        TrainConfig(negative_clip=1.0)
    from audioset_batch.errors import ConfigError
    from audioset_batch.training.runs import TrainingSpec

    with pytest.raises(ConfigError, match=r"run\.yml: lr_schedule must be one of constant, cosine"):
        TrainingSpec.from_json({"data": ["x.h5"], "lr_schedule": "step"}, source="run.yml")


def test_mixup_smoothing_and_cosine_decay_train_and_resume_on_the_same_curve(tmp_path: Path) -> None:
    import keras

    x, y = learnable_dataset(600, 4, seed=9)
    config = small_config(
        architecture="feature_level_attention", iterations=60, mixup=0.3, label_smoothing=0.05, lr_schedule="cosine"
    )

    train_until_interrupted(config, x, y, make_labels(4), tmp_path / "run", at=45)
    last = keras.models.load_model(tmp_path / "run" / "checkpoint" / "last.keras", safe_mode=True)
    assert float(last.optimizer.learning_rate) == pytest.approx(learning_rate_at(1e-3, "cosine", 39, 60), rel=1e-5)
    result = train(config, x, y, make_labels(4), tmp_path / "run")
    assert result.best_map > 0.7
    last = keras.models.load_model(tmp_path / "run" / "checkpoint" / "last.keras", safe_mode=True)
    assert float(last.optimizer.learning_rate) == pytest.approx(learning_rate_at(1e-3, "cosine", 59, 60), rel=1e-5)
    hyperparameters = artifact.verify(result.artifact).training["hyperparameters"]
    assert (hyperparameters["mixup"], hyperparameters["lr_schedule"]) == (0.3, "cosine")


def test_frame_self_attention_learns_and_loads_in_safe_mode(tmp_path: Path) -> None:
    x, y = learnable_dataset(600, 4, seed=10)
    config = small_config(architecture="frame_self_attention", iterations=60)
    result = train(config, x, y, make_labels(4), tmp_path / "run")
    assert result.best_map > 0.7
    net, manifest = artifact.load(result.artifact)
    assert manifest.architecture == "frame_self_attention"
    assert "MultiHeadAttention" in {type(layer).__name__ for layer in net.layers}


def test_stratified_folds_put_every_class_in_every_fold() -> None:
    _, y = learnable_dataset(400, 6, seed=11)
    fold_of = stratified_folds(y, 4, seed=0)
    assert sorted(set(fold_of.tolist())) == [0, 1, 2, 3]
    sizes = np.bincount(fold_of)
    assert sizes.max() - sizes.min() <= 1 + 6  # dealt round-robin within at most 7 strata
    for fold in range(4):
        assert y[fold_of == fold].any(axis=0).all()  # each fold holds positives of every class
    np.testing.assert_array_equal(fold_of, stratified_folds(y, 4, seed=0))  # deterministic


def test_cross_fit_targets_are_out_of_fold_predictions(tmp_path: Path) -> None:
    """Labels the data cannot predict: a model's own training clips echo them, held-out clips do not."""
    from model.architectures import build_model
    from model.inference import Predictor
    from model.metrics import evaluate

    rng = np.random.default_rng(12)
    x = rng.integers(0, 256, size=(240, 10, 128), dtype=np.uint8)
    y = rng.random((240, 3)) < 0.3
    y[np.arange(240), rng.integers(0, 3, 240)] = True
    config = small_config(architecture="feature_level_attention", iterations=200, cross_fit=2, dropout=0.0)
    result = train(config, x, y, make_labels(3), tmp_path / "run")
    summary = artifact.verify(result.artifact).training["cross_fit"]
    assert summary["folds"] == 2 and len(summary["fold_maps"]) == 2
    train_idx, fold_of, soft = out_of_fold_scores(config, y, tmp_path / "run")

    net = build_model("feature_level_attention", 3, 10, config.hidden_units, 0.0)
    net.load_weights(tmp_path / "run" / "folds" / "fold-0" / "checkpoint" / "best.weights.h5")
    seen = train_idx[fold_of == 1]  # fold 0's model trained on fold 1
    manifest = artifact.read_manifest(result.artifact)
    own = evaluate(y[seen], Predictor.from_keras(net, manifest).predict(x[seen])).mean_average_precision
    held_out = evaluate(y[train_idx[fold_of == 0]], soft[fold_of == 0]).mean_average_precision
    assert own > held_out + 0.15  # memorised where it trained; the soft targets come from where it did not
    assert summary["out_of_fold_map"] == pytest.approx(evaluate(y[train_idx], soft).mean_average_precision)


def test_cross_fit_trains_learns_records_and_resumes_fold_by_fold(tmp_path: Path) -> None:
    x, y = learnable_dataset(600, 4, seed=13)
    config = small_config(architecture="feature_level_attention", iterations=40, cross_fit=3, distill_weight=0.3)
    stages: list[str] = []

    def interrupt(p: Progress) -> None:
        if not stages or stages[-1] != p.stage:
            stages.append(p.stage)
        if p.stage == "fold 2/3" and p.iteration == 25:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config, x, y, make_labels(4), tmp_path / "run", on_progress=interrupt)
    assert stages == ["fold 1/3", "fold 2/3"]
    first_fold = tmp_path / "run" / "folds" / "fold-0" / "predictions.npz"
    written = first_fold.stat().st_mtime_ns
    resumed: list[tuple[str, int]] = []
    result = train(
        config, x, y, make_labels(4), tmp_path / "run", on_progress=lambda p: resumed.append((p.stage, p.iteration))
    )
    assert resumed[0] == ("fold 2/3", 21)  # fold 1 is not trained again; fold 2 resumes from its checkpoint
    assert [s for s, _ in resumed if s == "fold 3/3"] and resumed[-1] == ("", 40)
    assert first_fold.stat().st_mtime_ns == written
    assert result.best_map > 0.7
    recorded = artifact.verify(result.artifact).training
    assert recorded["hyperparameters"]["cross_fit"] == 3
    assert len(recorded["cross_fit"]["fold_maps"]) == 3 and recorded["cross_fit"]["out_of_fold_map"] > 0.6
    assert 0 < recorded["cross_fit"]["fold_ensemble_map"] <= 1


def test_cross_fit_settings_are_checked() -> None:
    with pytest.raises(TrainConfigError, match="number of folds"):
        TrainConfig(cross_fit=1)
    with pytest.raises(TrainConfigError, match="choose one"):
        TrainConfig(cross_fit=3, teachers=["t"])
    with pytest.raises(TrainConfigError, match="fold_hidden_units"):
        TrainConfig(cross_fit=3, fold_hidden_units=0)
    with pytest.raises(TrainConfigError, match=r"fold_iterations must be in \[1, 10000000\], got 0"):
        TrainConfig(cross_fit=3, fold_iterations=0)
    with pytest.raises(TrainConfigError, match=r"fold_architecture must be one of decision_level_max_pooling, .*'fla'"):
        TrainConfig(cross_fit=3, fold_architecture="fla")
    with pytest.raises(TrainConfigError, match=r"architecture must be one of .*got 'feature_level'"):
        TrainConfig(architecture="feature_level")
    # Set without --cross-fit they would shape nothing: refused, not ignored.
    with pytest.raises(TrainConfigError, match="fold_hidden_units, fold_iterations need --cross-fit"):
        TrainConfig(fold_hidden_units=16, fold_iterations=100)


def test_a_queued_runs_architecture_is_checked_when_its_spec_is_read() -> None:
    from audioset_batch.errors import ConfigError
    from audioset_batch.training.runs import TrainingSpec

    with pytest.raises(ConfigError, match=r"run\.yml: architecture must be one of .*got 'feature_level'"):
        TrainingSpec.from_json({"data": ["x.h5"], "architecture": "feature_level"}, source="run.yml")


def test_fold_models_can_be_narrower_than_the_model(tmp_path: Path) -> None:
    from model.architectures import build_model

    x, y = learnable_dataset(300, 3, seed=14)
    config = small_config(
        architecture="feature_level_attention", iterations=20, cross_fit=2, hidden_units=48, fold_hidden_units=16
    )
    result = train(config, x, y, make_labels(3), tmp_path / "run")
    fold_weights = tmp_path / "run" / "folds" / "fold-1" / "checkpoint" / "best.weights.h5"
    build_model("feature_level_attention", 3, 10, 16, 0.2).load_weights(fold_weights)
    net, manifest = artifact.load(result.artifact)
    assert manifest.hidden_units == 48 and net.get_layer("block1_dense").kernel.shape == (128, 48)
    with pytest.raises(ValueError):  # the folds really are 16 wide, not 48
        build_model("feature_level_attention", 3, 10, 48, 0.2).load_weights(fold_weights)
    assert artifact.verify(result.artifact).training["hyperparameters"]["fold_hidden_units"] == 16


def test_fold_models_can_be_another_architecture_trained_for_fewer_iterations(tmp_path: Path) -> None:
    from model.architectures import build_model

    x, y = learnable_dataset(300, 3, seed=15)
    config = small_config(
        architecture="decision_level_multi_attention",
        iterations=40,
        cross_fit=2,
        hidden_units=32,
        fold_architecture="feature_level_attention",
        fold_hidden_units=16,
        fold_iterations=20,
    )
    result = train(config, x, y, make_labels(3), tmp_path / "run")
    assert result.iterations_run == 40
    for fold in (0, 1):
        checkpoint = tmp_path / "run" / "folds" / f"fold-{fold}" / "checkpoint"
        state = json.loads((checkpoint / "state.json").read_text())
        assert [entry["iteration"] for entry in state["history"]] == [20]  # stopped at --fold-iterations
        assert state["config"]["architecture"] == "feature_level_attention"
        build_model("feature_level_attention", 3, 10, 16, 0.2).load_weights(checkpoint / "best.weights.h5")
    manifest = artifact.load(result.artifact)[1]
    assert manifest.architecture == "decision_level_multi_attention" and manifest.hidden_units == 32
    recorded = artifact.verify(result.artifact).training["hyperparameters"]
    assert (recorded["fold_architecture"], recorded["fold_iterations"]) == ("feature_level_attention", 20)
    # Resuming to more iterations extends the model only: the folds stay at --fold-iterations.
    more = train(config.but(iterations=60), x, y, make_labels(3), tmp_path / "run")
    assert more.iterations_run == 60
    state = json.loads((tmp_path / "run" / "folds" / "fold-0" / "checkpoint" / "state.json").read_text())
    assert [entry["iteration"] for entry in state["history"]] == [20]
    # Finished folds are reused, never trained again, so folds of other settings are refused, not used: even when
    # the model itself has not started (its checkpoint would refuse the change too).
    shutil.rmtree(tmp_path / "run" / "checkpoint")
    other = config.but(fold_architecture="decision_level_average_pooling")
    with pytest.raises(TrainingDataError, match=r"fold-0 holds a run with other data or settings \(architecture: "):
        train(other, x, y, make_labels(3), tmp_path / "run")
    predictions = tmp_path / "run" / "folds" / "fold-0" / "predictions.npz"
    written = predictions.stat().st_mtime_ns
    stages: set[str] = set()
    renamed = config.but(name="renamed", version="2")  # labels only: the folds do not depend on them
    train(renamed, x, y, make_labels(3), tmp_path / "run", on_progress=lambda p: stages.add(p.stage))
    assert stages == {""} and predictions.stat().st_mtime_ns == written  # reused, not trained again


def test_a_separate_validation_file_selects_checkpoints_and_every_training_clip_is_trained_on(tmp_path: Path) -> None:
    from model.metrics import evaluate

    x, y = learnable_dataset(1000, 6, seed=0)
    x_train, y_train, x_val, y_val = x[:800], y[:800], x[800:], y[800:]
    result = train(
        small_config(),
        x_train,
        y_train,
        make_labels(6),
        tmp_path / "run",
        validation=(x_val, y_val),
        validation_description="heldout.h5",
    )
    manifest = artifact.verify(result.artifact)
    assert (manifest.training["train_clips"], manifest.training["validation_clips"]) == (800, 200)
    assert manifest.training["clips"] == 800 and manifest.training["validation_data"] == "heldout.h5"
    model, _ = artifact.load(result.artifact)
    from model.inference import Predictor

    scores = Predictor.from_keras(model, manifest).predict(x_val)
    recomputed = evaluate(y_val.astype(bool), scores).mean_average_precision
    assert recomputed == pytest.approx(result.best_map, abs=1e-5) and result.best_map > 0.7
    with pytest.raises(TrainingDataError, match="is the training data"):
        train(small_config(), x_train, y_train, make_labels(6), tmp_path / "same", validation=(x_train, y_train))
    with pytest.raises(TrainingDataError, match="differs from the training data"):
        train(small_config(), x_train, y_train, make_labels(6), tmp_path / "odd", validation=(x_val, y_val[:, :3]))


def test_train_command_takes_a_validation_file(tmp_path: Path) -> None:
    import subprocess
    import sys

    import h5py

    from tests.conftest import ROOT

    x, y = learnable_dataset(500, 3, seed=2)
    for name, part in (("train.h5", slice(0, 400)), ("val.h5", slice(400, 500))):
        with h5py.File(tmp_path / name, "w") as f:
            f["x"], f["y"] = x[part], y[part]
    labels = tmp_path / "labels.csv"
    labels.write_text("index,mid,display_name\n0,/x/a,Alpha\n1,/x/b,Beta\n2,/x/c,Gamma\n")
    command = [
        sys.executable,
        "-m",
        "cli",
        "train",
        str(tmp_path / "train.h5"),
        "--validation",
        str(tmp_path / "val.h5"),
        "--labels",
        str(labels),
        "--output",
        str(tmp_path / "run"),
        "--iterations",
        "20",
        "--eval-every",
        "10",
        "--hidden-units",
        "16",
        "--batch-size",
        "32",
        "--forms",
        "skip",
    ]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    manifest = artifact.read_manifest(tmp_path / "run" / "model")
    assert manifest.training["train_clips"] == 400 and manifest.training["validation_clips"] == 100
    recorded = (manifest.training["data"], manifest.training["validation_data"])
    assert recorded == ("train.h5", "val.h5")  # file names: the folders of the host it trained on are not recorded


def test_a_file_given_twice_or_as_both_training_and_validation_data_is_refused_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Counting a file's clips twice, or choosing checkpoints on clips the model trained on, is one line, not a run."""
    import h5py
    from click.testing import CliRunner

    from audioset_batch.settings import load_settings
    from audioset_batch.training.datasets import load_training_data
    from cli import main

    monkeypatch.chdir(tmp_path)
    x, y = learnable_dataset(60, 3, seed=4)
    (tmp_path / "data").mkdir()
    for name, part in (("data/a.h5", slice(0, 30)), ("data/b.h5", slice(30, 60))):
        with h5py.File(tmp_path / name, "w") as f:
            f["x"], f["y"] = x[part], y[part]
    (tmp_path / "labels.csv").write_text("index,mid,display_name\n0,/x/a,Alpha\n1,/x/b,Beta\n2,/x/c,Gamma\n")

    def train(*args: str) -> str:
        run = CliRunner().invoke(main, ["train", *args, "--labels", "labels.csv", "--output", "run", "-q"])
        assert run.exit_code == 1 and not (tmp_path / "run").exists(), run.output
        return run.output

    assert train("data/a.h5", "data/a.h5") == (
        "error: LocationError: data/a.h5: given more than once (by name, or inside a folder also given); "
        "its clips would count twice\n"
    )
    assert "data/b.h5: given more than once" in train("data", "data/b.h5")
    overlap = train("data/a.h5", "data/b.h5", "--validation", "./data/b.h5")
    assert overlap.startswith("error: TrainingDataError: data/b.h5 is both training and validation data")

    loaded = load_training_data(["data/a.h5"], ["data/b.h5"], "labels.csv", load_settings())  # the queued run's path
    assert (len(loaded.train.x), len(loaded.held_out.x) if loaded.held_out else 0) == (30, 30)
    assert [c.name for c in loaded.labels] == ["Alpha", "Beta", "Gamma"]


def test_asymmetric_loss_spares_easy_and_likely_missing_negatives_and_is_cross_entropy_without_them() -> None:
    import keras

    from model.losses import AsymmetricLoss

    def per_clip(loss: keras.losses.Loss, t: list[float], p: list[float]) -> float:
        return float(loss.call(np.array([t], dtype=np.float32), np.array([p], dtype=np.float32))[0])

    t, p = [1.0, 0.0, 0.0, 0.3], [0.7, 0.2, 0.03, 0.4]
    plain = keras.losses.BinaryCrossentropy()
    expected = float(plain(np.array([t]), np.array([p])))
    assert per_clip(AsymmetricLoss(gamma=0.0, clip=0.0), t, p) == pytest.approx(expected, rel=1e-4)

    asymmetric = AsymmetricLoss(gamma=4.0, clip=0.05)
    # A positive costs what it costs under cross-entropy; a negative scored below the clip costs nothing.
    assert per_clip(asymmetric, [1.0], [0.7]) == pytest.approx(-np.log(0.7), rel=1e-5)
    assert per_clip(asymmetric, [0.0], [0.03]) == pytest.approx(0.0, abs=1e-9)
    assert 0 < per_clip(asymmetric, [0.0], [0.2]) < 0.01 * -np.log(0.8)
    # The push on a negative (the gradient on its logit) weakens again where the net is sure the sound is there:
    # a likely missing label is not forced down as hard. Cross-entropy's push only grows.
    import tensorflow as tf

    logits = tf.Variable(np.linspace(-3.0, 8.0, 400, dtype=np.float32)[:, None])
    with tf.GradientTape(persistent=True) as tape:
        negatives = tf.zeros_like(logits)
        spared = asymmetric.call(negatives, tf.sigmoid(logits))
        pushed = AsymmetricLoss(gamma=0.0, clip=0.0).call(negatives, tf.sigmoid(logits))
    grads = tape.gradient(spared, logits).numpy()[:, 0]
    peak = int(np.argmax(grads))
    assert 0 < peak < len(grads) - 1 and grads[-1] < 0.5 * grads[peak]
    assert np.all(np.diff(tape.gradient(pushed, logits).numpy()[:, 0]) > 0)
    restored = AsymmetricLoss.from_config(asymmetric.get_config())
    assert (restored.gamma, restored.clip) == (4.0, 0.05)


def test_asymmetric_loss_trains_resumes_in_safe_mode_and_is_recorded(tmp_path: Path) -> None:
    import keras

    x, y = learnable_dataset(600, 4, seed=14)
    config = small_config(architecture="feature_level_attention", iterations=60, loss="asymmetric", negative_gamma=2.0)

    train_until_interrupted(config, x, y, make_labels(4), tmp_path / "run", at=30)
    last = keras.models.load_model(tmp_path / "run" / "checkpoint" / "last.keras", safe_mode=True)
    assert type(last.loss).__name__ == "AsymmetricLoss" and last.loss.gamma == 2.0
    result = train(config, x, y, make_labels(4), tmp_path / "run")
    assert [h["iteration"] for h in result.history] == [20, 40, 60]
    assert result.best_map > 0.7
    hyperparameters = artifact.verify(result.artifact).training["hyperparameters"]
    assert (hyperparameters["loss"], hyperparameters["negative_gamma"], hyperparameters["negative_clip"]) == (
        "asymmetric",
        2.0,
        0.05,
    )
    with pytest.raises(TrainingDataError, match=r"loss: 'asymmetric' -> 'binary_crossentropy'"):
        train(
            small_config(architecture="feature_level_attention", iterations=80), x, y, make_labels(4), tmp_path / "run"
        )


def test_windows_are_tiled_within_the_heard_frames() -> None:
    from model.clip_windows import clip_lengths, tile_windows, window_starts

    x = np.arange(1, 4 * 10 + 1, dtype=np.uint8).reshape(4, 10, 1).repeat(128, axis=2)
    x[1, 6:] = 0  # a 6-second clip, zero-padded
    x[2] = 0  # silence throughout
    assert clip_lengths(x).tolist() == [10, 6, 10, 10]
    tiled = tile_windows(x, np.array([0, 4, 8, 3]), 2)
    assert tiled[1, :, 0].tolist() == [15, 16] * 5 and tiled[3, :, 0].tolist() == [34, 35] * 5
    rng = np.random.default_rng(0)
    starts = np.stack([window_starts(clip_lengths(x), 2, 10, rng) for _ in range(500)])
    assert starts[:, 0].min() == 0 and starts[:, 0].max() == 8
    assert starts[:, 1].max() == 4  # never a window of padding where the clip has heard frames
    assert set(np.unique(starts[:, 3])) == set(range(9))


def test_window_teacher_targets_score_every_window_and_train_a_student_that_resumes(tmp_path: Path) -> None:
    from model.clip_windows import tile_windows
    from model.inference import Predictor
    from model.soft_targets import teacher_targets

    x, y = learnable_dataset(800, 5, seed=15)
    teacher = train(small_config(architecture="feature_level_attention"), x, y, make_labels(5), tmp_path / "teacher")
    fingerprint = artifact.read_manifest(teacher.artifact).training["data_fingerprint"]
    soft, _ = teacher_targets([str(teacher.artifact)], x[:30], 5, fingerprint, (0.1, 3), window=2)
    assert soft.shape == (30, 9, 5) and soft.dtype == np.float16
    predictor = Predictor.from_artifact(teacher.artifact)
    np.testing.assert_allclose(soft[:, 4], predictor.predict(tile_windows(x[:30], np.full(30, 4), 2)), atol=2e-3)
    # A class whose pattern lies in a few frames scores higher in some windows than in others.
    assert float((soft.max(axis=1) - soft.min(axis=1)).max()) > 0.3

    config = small_config(
        architecture="feature_level_attention",
        iterations=60,
        teachers=[str(teacher.artifact)],
        teacher_window=2,
        distill_weight=0.7,
        seed=4,
        split_seed=3,  # the teacher's hold-out
    )
    train_until_interrupted(config, x, y, make_labels(5), tmp_path / "student", at=30)
    student = train(config, x, y, make_labels(5), tmp_path / "student")
    assert [h["iteration"] for h in student.history] == [20, 40, 60]
    assert student.best_map > 0.7  # trained on 2-frame windows, it still ranks whole clips
    assert artifact.verify(student.artifact).training["hyperparameters"]["teacher_window"] == 2
    with pytest.raises(TrainingDataError, match=r"teacher_window 11 is longer than the clips \(10 frames\)"):
        train(small_config(teachers=[str(teacher.artifact)], teacher_window=11), x, y, make_labels(5), tmp_path / "x")
    with pytest.raises(TrainConfigError, match="teacher_window needs --teacher or --cross-fit"):
        small_config(teacher_window=2)


def test_cross_fit_window_targets_come_from_the_fold_that_did_not_see_the_clip(tmp_path: Path) -> None:
    """Out-of-fold window scores; a finished clip-level cross-fit's folds are reused, not trained again."""
    import shutil

    from model.architectures import build_model
    from model.clip_windows import tile_windows
    from model.inference import Predictor
    from model.sampling import stratified_split

    x, y = learnable_dataset(600, 4, seed=16)
    clip_level = small_config(architecture="feature_level_attention", iterations=40, cross_fit=2, distill_weight=0.7)
    train(clip_level, x, y, make_labels(4), tmp_path / "clips")
    shutil.copytree(tmp_path / "clips" / "folds", tmp_path / "windows" / "folds")
    predictions = tmp_path / "windows" / "folds" / "fold-0" / "predictions.npz"
    written = predictions.stat().st_mtime_ns
    stages: set[str] = set()
    windowed = small_config(  # another distill weight: the folds, which have no soft targets, do not depend on it
        architecture="feature_level_attention", iterations=40, cross_fit=2, distill_weight=0.5, teacher_window=2
    )
    result = train(windowed, x, y, make_labels(4), tmp_path / "windows", on_progress=lambda p: stages.add(p.stage))
    assert stages == {""} and predictions.stat().st_mtime_ns == written  # folds reopened, not retrained

    train_idx, _ = stratified_split(y, *clip_level.validation_split)
    held = train_idx[stratified_folds(y[train_idx], 2, clip_level.seed) == 0]
    with np.load(tmp_path / "windows" / "folds" / "fold-0" / "windows-2.npz") as saved:
        scores = saved["held"]
    assert scores.shape == (len(held), 9, 4) and scores.dtype == np.float16
    net = build_model("feature_level_attention", 4, 10, clip_level.hidden_units, clip_level.dropout)
    net.load_weights(tmp_path / "windows" / "folds" / "fold-0" / "checkpoint" / "best.weights.h5")
    manifest = artifact.read_manifest(result.artifact)
    fold_model = Predictor.from_keras(net, manifest).predict(tile_windows(x[held], np.full(len(held), 3), 2))
    np.testing.assert_allclose(scores[:, 3], fold_model, atol=2e-3)
    assert result.best_map > 0.7
    recorded = artifact.verify(result.artifact).training
    assert recorded["hyperparameters"]["teacher_window"] == 2 and recorded["hyperparameters"]["cross_fit"] == 2
    with pytest.raises(TrainingDataError, match=r"fold-0 holds a run with other data or settings \(the training data"):
        train(clip_level, x[:500], y[:500], make_labels(4), tmp_path / "clips")  # other clips, the same folder
    for fold in (0, 1):  # folds copied without their checkpoints (predictions only) are checked by their clips
        shutil.rmtree(tmp_path / "clips" / "folds" / f"fold-{fold}" / "checkpoint")
    with pytest.raises(TrainingDataError, match=r"fold-0/predictions.npz does not match this data"):
        train(clip_level, x[:500], y[:500], make_labels(4), tmp_path / "clips")


def test_a_teacher_trained_on_all_the_clips_or_on_the_validation_file_is_refused(tmp_path: Path) -> None:
    x, y = learnable_dataset(400, 3, seed=16)
    x_train, y_train, x_val, y_val = x[:300], y[:300], x[300:], y[300:]
    on_all = train(
        small_config(iterations=20), x_train, y_train, make_labels(3), tmp_path / "all", validation=(x_val, y_val)
    )
    # A split run on the same clips: the teacher has trained on its validation clips.
    with pytest.raises(TrainingDataError, match="another validation split"):
        train(small_config(teachers=[str(on_all.artifact)]), x_train, y_train, make_labels(3), tmp_path / "split")
    # A run validated on the file another teacher trained on.
    on_val = train(small_config(iterations=20), x_val, y_val, make_labels(3), tmp_path / "val")
    with pytest.raises(TrainingDataError, match="trained on this run's validation data"):
        train(
            small_config(teachers=[str(on_val.artifact)]),
            x_train,
            y_train,
            make_labels(3),
            tmp_path / "leak",
            validation=(x_val, y_val),
        )
    # The same file and clips as the teacher: allowed (it saw the training clips only).
    student = train(
        small_config(iterations=20, teachers=[str(on_all.artifact)]),
        x_train,
        y_train,
        make_labels(3),
        tmp_path / "ok",
        validation=(x_val, y_val),
    )
    assert student.best_map > 0


def test_likely_missing_labels_are_each_class_s_highest_scored_unlabelled_clips() -> None:
    from model.soft_targets import likely_missing

    labels = np.zeros((8, 3), dtype=bool)
    labels[[0, 1], 0] = True  # two labelled clips of class 0; class 1 has one; class 2 none
    labels[5, 1] = True
    scores = np.tile(np.linspace(0.1, 0.8, 8, dtype=np.float32)[:, None], (1, 3))
    missing = likely_missing(labels, scores, per_positive=1.0)
    assert np.flatnonzero(missing[:, 0]).tolist() == [6, 7]  # as many as labelled, the highest scored
    assert np.flatnonzero(missing[:, 1]).tolist() == [7]  # clip 6 would be next, never the labelled clip 5
    assert not missing[:, 2].any()  # no labelled clip: nothing to go by
    assert not (missing & labels).any()
    assert likely_missing(labels, scores, per_positive=0.5).sum(axis=0).tolist() == [1, 0, 0]  # rounds half to even

    # Window scores rank a clip by its best window within its heard frames.
    windows = np.zeros((8, 4, 3), dtype=np.float16)
    windows[2, 3, 0] = 0.9  # clip 2's best window is padding: ignored
    windows[3, 1, 0] = 0.8
    windows[4, 0, 0] = 0.7
    last_starts = np.array([3, 3, 1, 3, 3, 3, 3, 3])
    by_window = likely_missing(labels, windows, per_positive=1.0, last_starts=last_starts)
    assert np.flatnonzero(by_window[:, 0]).tolist() == [3, 4]
    assert np.flatnonzero(likely_missing(labels, windows, per_positive=1.0)[:, 0]).tolist() == [2, 3]


def test_a_missing_label_stays_unknown_through_splicing_unless_a_source_clip_is_labelled() -> None:
    from model.soft_targets import UNKNOWN_TARGET, hide_missing

    targets = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 0.0]], dtype=np.float32)
    missing = np.array([[True, False], [False, False], [False, True]])
    rng = np.random.default_rng(0)
    block = np.concatenate([targets, missing, targets], axis=1, dtype=np.float32)
    x = np.zeros((3, 10, 128), dtype=np.float32)
    for union in (False, True):
        while True:  # until clip 0 takes frames from clip 1 and clip 2 from clip 0
            _, mixed = frame_mix_batch(x, block, 1.0, rng, union=union)
            t, m, labelled = np.split(mixed, 3, axis=1)
            if t[0, 0] > 0 and m[2, 0] > 0:
                break
        hidden = hide_missing(t, m, labelled)
        assert hidden[0, 0] == t[0, 0] > 0  # clip 0's missing label met clip 1's real one: a (shared) positive
        assert hidden[2, 0] == UNKNOWN_TARGET  # clip 2 took frames of clip 0, whose label is missing
        assert hidden[2, 1] == UNKNOWN_TARGET and hidden[1, 0] > 0
    assert hide_missing(targets, np.zeros_like(targets), targets).tolist() == targets.tolist()


def test_unknown_targets_cost_nothing_and_the_rest_cost_cross_entropy() -> None:
    import keras
    import tensorflow as tf

    from model.losses import AsymmetricLoss, MaskedBinaryCrossentropy

    t = np.array([[1.0, 0.0, 0.3, 0.0]], dtype=np.float32)
    p = np.array([[0.7, 0.2, 0.4, 0.9]], dtype=np.float32)
    plain = float(keras.losses.BinaryCrossentropy()(t, p))
    masked = MaskedBinaryCrossentropy()
    assert float(masked.call(t, p)[0]) == pytest.approx(plain, rel=1e-4)
    unknown = t.copy()
    unknown[0, 3] = -1.0  # the confident "negative" is a likely missing label
    expected = plain - float(-np.log(1 - 0.9)) / 4  # its term leaves the sum; the mean keeps 4 classes
    assert float(masked.call(unknown, p)[0]) == pytest.approx(expected, rel=1e-4)
    asymmetric = AsymmetricLoss(gamma=0.0, clip=0.0)
    assert float(asymmetric.call(unknown, p)[0]) == pytest.approx(expected, rel=1e-4)

    scores = tf.Variable(p)
    with tf.GradientTape() as tape:
        loss = masked.call(unknown, scores)
    grads = tape.gradient(loss, scores).numpy()[0]
    assert grads[3] == 0 and np.all(grads[:3] != 0)
    assert isinstance(MaskedBinaryCrossentropy.from_config(masked.get_config()), MaskedBinaryCrossentropy)


def test_masking_negatives_finds_planted_missing_labels_trains_and_resumes(tmp_path: Path) -> None:
    import keras

    from model.soft_targets import likely_missing

    x, y_true = learnable_dataset(900, 4, seed=17)
    y = y_true.copy()
    rng = np.random.default_rng(17)
    dropped = rng.random(y.shape) < 0.25
    dropped &= y_true
    y[dropped] = False  # the annotators missed a quarter of the sounds that are there
    y[np.flatnonzero(~y.any(axis=1)), 0] = True
    dropped &= ~y
    config = small_config(
        architecture="feature_level_attention",
        iterations=60,
        cross_fit=2,
        distill_weight=0.0,
        mask_negatives=0.3,
        frame_mix=0.3,
        dropout=0.0,
    )

    def interrupt(p: Progress) -> None:
        if p.stage == "" and p.iteration == 30:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config, x, y, make_labels(4), tmp_path / "run", on_progress=interrupt)
    last = keras.models.load_model(tmp_path / "run" / "checkpoint" / "last.keras", safe_mode=True)
    assert type(last.loss).__name__ == "MaskedBinaryCrossentropy"
    result = train(config, x, y, make_labels(4), tmp_path / "run")
    assert [h["iteration"] for h in result.history] == [20, 40, 60] and result.best_map > 0.6

    # The out-of-fold scores the run masked by find the planted misses far above their share of the negatives.
    train_idx, _, soft = out_of_fold_scores(config, y, tmp_path / "run")
    missing = likely_missing(y[train_idx], soft, 0.3)
    recorded = artifact.verify(result.artifact).training
    assert recorded["masked_negatives"] == int(missing.sum()) > 0
    assert recorded["hyperparameters"]["mask_negatives"] == 0.3
    planted = dropped[train_idx]
    share_of_negatives = planted.sum() / (~y[train_idx]).sum()
    assert planted[missing].mean() > max(0.5, 4 * share_of_negatives)  # 0.71 against 0.12 at this seed
    with pytest.raises(TrainConfigError, match="mask_negatives needs --teacher or --cross-fit"):
        small_config(mask_negatives=0.5)
