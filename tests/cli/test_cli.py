from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from cli import main
from tests.helpers import learnable_dataset, write_h5


@pytest.fixture(autouse=True)
def isolated_settings(monkeypatch: pytest.MonkeyPatch, tiny_model: Path) -> None:
    import os

    from audioset_batch.settings import get_settings

    for name in list(os.environ):
        if name.startswith("AUDIOSET_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AUDIOSET_MODEL_PATH", str(tiny_model))
    monkeypatch.setenv("AUDIOSET_PRECISION", "float32")  # exact model tags; the default has its own tests
    get_settings.cache_clear()


def test_score_writes_the_worker_format(tmp_path: Path) -> None:
    path = write_h5(tmp_path / "a.h5", clips=4, classes=12)
    out = tmp_path / "a.jsonl"
    result = CliRunner().invoke(main, ["score", str(path), "-o", str(out), "--scores", "full", "--top-k", "3"])
    assert result.exit_code == 0, result.output
    lines = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert len(lines) == 4 and len(lines[0]["labels"]) == 3 and len(lines[0]["scores"]) == 12
    assert lines[0]["labels"][0]["score"] == pytest.approx(max(lines[0]["scores"]), rel=1e-6)


def test_a_file_named_twice_is_scored_once_and_said(tmp_path: Path) -> None:
    path = write_h5(tmp_path / "in" / "a.h5", clips=4, classes=12)
    out = tmp_path / "a.jsonl"
    result = CliRunner().invoke(main, ["score", str(path), str(tmp_path / "in"), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert f"{path}: given more than once; scored once" in result.stderr
    assert [orjson.loads(line)["index"] for line in out.read_bytes().splitlines()] == [0, 1, 2, 3]


def test_a_file_named_by_its_path_and_its_bucket_url_is_one_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from audioset_batch.settings import get_settings

    monkeypatch.setenv("AUDIOSET_LOCAL_ROOT", str(tmp_path))
    get_settings.cache_clear()
    path = write_h5(tmp_path / "incoming" / "a.h5", clips=3, classes=12)
    out = tmp_path / "a.jsonl"
    result = CliRunner().invoke(main, ["score", str(path), "file://incoming/a.h5", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "file://incoming/a.h5: given more than once; scored once" in result.stderr
    assert len(out.read_bytes().splitlines()) == 3


def test_a_training_run_folder_given_as_the_model_points_at_its_model(tmp_path: Path, tiny_model: Path) -> None:
    import shutil

    shutil.copytree(tiny_model, tmp_path / "run" / "model")  # what `audioset train --output run` leaves
    path = write_h5(tmp_path / "a.h5", clips=2, classes=12)
    result = CliRunner().invoke(main, ["score", str(path), "--model", str(tmp_path / "run")])
    assert result.exit_code == 1
    assert result.output.endswith(f"run: no manifest.json; the artifact is {tmp_path / 'run' / 'model'}\n")


def test_score_reports_bad_input_clearly(tmp_path: Path) -> None:
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"nope")
    result = CliRunner().invoke(main, ["score", str(bad), "-o", str(tmp_path / "o.jsonl")])
    assert result.exit_code == 1
    assert "NotHDF5Error: " + str(bad) + ": not an HDF5 file" in result.output
    assert not (tmp_path / "o.jsonl").exists()


def test_bad_setting_stops_with_the_variable_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUDIOSET_TOP_K", "-3")
    result = CliRunner().invoke(main, ["config"])
    assert result.exit_code == 2 and "AUDIOSET_TOP_K" in result.output


def test_config_masks_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUDIOSET_COS_ACCESS_KEY_ID", "AKID1234")
    monkeypatch.setenv("AUDIOSET_COS_SECRET_ACCESS_KEY", "hunter2hunter2")
    result = CliRunner().invoke(main, ["config", "--json"])
    values = json.loads(result.stdout)
    assert values["AUDIOSET_COS_SECRET_ACCESS_KEY"] == "***" and "hunter2" not in result.output


def test_custom_label_set_trains_and_is_served_under_its_names(tmp_path: Path) -> None:
    import h5py

    x, y = learnable_dataset(600, 3, seed=1)
    data = tmp_path / "train.h5"
    with h5py.File(data, "w") as f:
        f["x"], f["y"] = x, y
    labels = tmp_path / "labels.csv"
    labels.write_text("index,mid,display_name\n0,/x/bird,Bird\n1,/x/drill,Drill\n2,/x/rain,Rain\n")
    out = tmp_path / "run"
    result = CliRunner().invoke(
        main,
        [
            "train",
            str(data),
            "--labels",
            str(labels),
            "--output",
            str(out),
            "--architecture",
            "decision_level_single_attention",
            "--iterations",
            "60",
            "--batch-size",
            "64",
            "--hidden-units",
            "64",
            "--eval-every",
            "30",
            "--name",
            "birds",
        ],
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["validation_map"] > 0.6

    scored = CliRunner().invoke(
        main, ["score", str(data), "--model", str(out / "model"), "-o", str(tmp_path / "p.jsonl")]
    )
    assert scored.exit_code == 0, scored.output
    first = orjson.loads((tmp_path / "p.jsonl").read_bytes().splitlines()[0])
    assert {label["name"] for label in first["labels"]} == {"Bird", "Drill", "Rain"}
    assert first["model"] == "birds@1"

    evaluated = CliRunner().invoke(
        main,
        [
            "evaluate",
            str(out / "model"),
            str(data),
            "--json",
            "--per-class",
            str(tmp_path / "pc.csv"),
            "--plot",
            str(tmp_path / "ap.png"),
        ],
    )
    assert evaluated.exit_code == 0, evaluated.output
    numbers = json.loads(evaluated.stdout.strip().splitlines()[-1])
    assert numbers["mAP"] > 0.6 and numbers["d_prime"] > 0
    assert (tmp_path / "pc.csv").read_text().splitlines()[1].startswith("0,/x/bird,Bird,")

    # A branched student with a weight average, distilled from the model above on the same hold-out.
    student = CliRunner().invoke(
        main,
        [
            "train",
            str(data),
            "--labels",
            str(labels),
            "--output",
            str(tmp_path / "student"),
            "--architecture",
            "feature_level_attention",
            "--iterations",
            "40",
            "--batch-size",
            "64",
            "--hidden-units",
            "32",
            "--eval-every",
            "20",
            "--seed",
            "5",
            "--split-seed",
            "0",
            "--teacher",
            str(out / "model"),
            "--distill-weight",
            "0.7",
            "--branches",
            "2",
            "--ema-decay",
            "0.9",
            "--mixup",
            "0.2",
            "--label-smoothing",
            "0.05",
            "--lr-schedule",
            "cosine",
            "--frame-mix",
            "0.2",
            "--frame-mix-targets",
            "union",
            "--weight-decay",
            "0.01",
            "--precision",
            "bfloat16",
            "--forms",
            "skip",
        ],
    )
    assert student.exit_code == 0, student.output
    manifest = json.loads((tmp_path / "student" / "model" / "manifest.json").read_text())
    params = manifest["training"]["hyperparameters"]
    assert (params["seed"], params["split_seed"], params["distill_weight"]) == (5, 0, 0.7)
    assert (params["branches"], params["ema_decay"], manifest["branches"]) == (2, 0.9, 2)
    assert (params["mixup"], params["label_smoothing"], params["lr_schedule"]) == (0.2, 0.05, "cosine")
    assert (params["frame_mix"], params["frame_mix_targets"], params["weight_decay"]) == (0.2, "union", 0.01)
    assert params["precision"] == "bfloat16" and params["compile_forms"] is False and "compiled" not in manifest
    assert [t["model"] for t in manifest["training"]["teachers"]] == ["birds@1"]
    assert (
        manifest["training"]["validation_clips"]
        == json.loads((out / "model" / "manifest.json").read_text())["training"]["validation_clips"]
    )
    assert (tmp_path / "ap.png").read_bytes()[:4] == b"\x89PNG"


def test_jobs_prune_and_delete(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import sqlite3

    from audioset_batch.jobs.factory import open_job_store

    state = tmp_path / "state.db"
    monkeypatch.setenv("AUDIOSET_STATE_URL", f"sqlite:///{state}")
    store = open_job_store(f"sqlite:///{state}")
    old, fresh, pending = store.create_job(), store.create_job(), store.create_job()
    watcher = store.create_job(job_id="watch-0123456789ab")
    for job in (old, fresh, pending, watcher):
        store.add_items(job, ["s3://in/a.h5"])
    for job in (old, fresh, watcher):
        store.mark(job, "s3://in/a.h5", "scored")
    with sqlite3.connect(state) as conn:  # backdate all but `fresh` by two days
        conn.execute("UPDATE jobs SET created = created - 172800 WHERE id != ?", (fresh,))

    dry = CliRunner().invoke(main, ["jobs", "prune", "--older-than", "1d", "--dry-run", "--json"])
    assert dry.exit_code == 0, dry.output
    assert json.loads(dry.output) == {"removed": [old], "dry_run": True}
    assert len(store.list_jobs(None)) == 4

    pruned = CliRunner().invoke(main, ["jobs", "prune", "--older-than", "36h"])
    assert pruned.exit_code == 0 and pruned.stdout.split() == [old], pruned.output
    assert {s.id for s in store.list_jobs(None)} == {fresh, pending, watcher}

    deleted = CliRunner().invoke(main, ["jobs", "delete", watcher, "no-such-job"])
    assert deleted.exit_code == 2 and "no job 'no-such-job'" in deleted.output
    assert {s.id for s in store.list_jobs(None)} == {fresh, pending}

    bad = CliRunner().invoke(main, ["jobs", "prune", "--older-than", "soon"])
    assert bad.exit_code == 2 and "not a duration" in bad.output
    bare = CliRunner().invoke(main, ["jobs", "prune", "--older-than", "30"])  # 30 what? not 30 seconds
    assert bare.exit_code == 2 and "has no unit; write e.g. 30d (days)" in bare.output
    assert {s.id for s in store.list_jobs(None)} == {fresh, pending}


def test_unknown_job_or_run_is_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUDIOSET_STATE_URL", f"sqlite:///{tmp_path / 'state.db'}")
    job = CliRunner().invoke(main, ["jobs", "status", "nope"])
    assert job.exit_code == 2 and job.output == "error: no job 'nope' (see `audioset jobs list`)\n"
    run = CliRunner().invoke(main, ["training", "show", "nope"])
    assert run.exit_code == 2 and run.output == "error: no training run 'nope' (see `audioset training list`)\n"
    empty = CliRunner().invoke(main, ["training", "list"])  # nothing queued yet: said, not a blank screen
    assert empty.exit_code == 0 and "no training runs in sqlite:///" in empty.output and "--submit" in empty.output


def test_every_training_setting_is_a_train_option_with_its_help() -> None:
    """A new TrainConfig field is one edit: the option, its type, range and help come from the field."""
    from cli.training import config_from_options, train
    from model.train_config import TrainConfig

    options = {param.name: param for param in train.params}
    for name, info in TrainConfig.model_fields.items():
        if not (info.json_schema_extra or {}).get("hidden"):  # type: ignore[union-attr]
            assert name in options and options[name].help, name  # type: ignore[attr-defined]
    assert "0<=x<1" in str(options["dropout"].type)  # the limits are the field's own
    parsed = train.make_context("train", ["x.h5", "--sampling", "shuffle", "--teacher", "a", "--eval-every", "7"])
    config = config_from_options(parsed.params)
    assert (config.balanced, config.teachers, config.checkpoint_every) == (False, ["a"], 7)


def test_a_bug_is_never_taken_for_a_user_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A KeyError from a bug once printed as a user's mistake, and hid its traceback even under DEBUG."""
    import cli.doctor
    from audioset_batch.settings import get_settings

    def broken(*args: object) -> None:
        raise KeyError("boom")

    monkeypatch.setattr(cli.doctor, "run_checks", broken)
    result = CliRunner().invoke(main, ["doctor"])
    assert result.exit_code == 1
    assert result.stderr.strip() == "error: unexpected KeyError: 'boom' (AUDIOSET_LOG_LEVEL=DEBUG shows the traceback)"
    monkeypatch.setenv("AUDIOSET_LOG_LEVEL", "DEBUG")
    get_settings.cache_clear()
    result = CliRunner().invoke(main, ["doctor"])
    assert isinstance(result.exception, KeyError)  # the traceback goes through


def test_a_broken_setting_stops_every_command_with_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from audioset_batch.settings import get_settings

    monkeypatch.setenv("AUDIOSET_TOP_K", "0")
    get_settings.cache_clear()
    for command in (["config"], ["jobs", "list"], ["search", "Speech"]):
        result = CliRunner().invoke(main, command)
        assert result.exit_code == 2, (command, result.output)
        assert result.stderr.startswith("error: invalid configuration") and "AUDIOSET_TOP_K" in result.stderr
    assert CliRunner().invoke(main, ["score", "--help"]).exit_code == 0  # help needs no settings
