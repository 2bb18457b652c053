"""The paths a newcomer takes first, driven through the CLI: local paths and standard URLs, one-line errors,
no silent success, quiet logs, local mode, doctor and settings that tell the truth."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner, Result

from cli import main
from tests.conftest import ROOT, RedisServer
from tests.helpers import write_h5


@pytest.fixture(autouse=True)
def newcomer(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tiny_model: Path) -> Path:
    """A fresh working folder with nothing configured but the model (and float32 for exact tags)."""
    from audioset_batch.settings import get_settings
    from audioset_batch.storage.factory import _stores

    for name in list(os.environ):
        if name.startswith("AUDIOSET_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AUDIOSET_MODEL_PATH", str(tiny_model))
    monkeypatch.setenv("AUDIOSET_PRECISION", "float32")
    monkeypatch.setenv("AUDIOSET_LOCAL_ROOT", str(tmp_path / "buckets"))
    monkeypatch.setenv("AUDIOSET_BROKER_URL", "redis://127.0.0.1:1/0")  # nothing listens there
    monkeypatch.chdir(tmp_path)
    get_settings.cache_clear()
    _stores.clear()
    yield tmp_path
    get_settings.cache_clear()
    _stores.clear()


def run(*args: str) -> Result:
    from audioset_batch.settings import get_settings

    get_settings.cache_clear()
    return CliRunner().invoke(main, list(args))


def one_line_error(result: Result, code: int = 1) -> str:
    """The command failed with exactly one ``error:`` line and no traceback."""
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    return errors[0]


def jsonl(path: Path) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


# --- 1. one location rule -------------------------------------------------------------------------


def test_score_takes_a_folder_file_urls_and_creates_the_output_folder(newcomer: Path) -> None:
    write_h5(newcomer / "data" / "a.h5", clips=3, classes=12)
    write_h5(newcomer / "data" / "deeper" / "b.hdf5", clips=2, classes=12, seed=1)
    (newcomer / "data" / "notes.txt").write_text("not an input")
    (newcomer / "data" / "broken.h5").write_bytes(b"nope")

    folder = run("score", "data", "-o", "new/dir/all.jsonl")
    assert one_line_error(folder).startswith("error: 1 of 3 file(s) could not be scored")
    assert "data/broken.h5: NotHDF5Error" in folder.output  # named, and the others still scored
    assert [(r["source"], r["index"]) for r in jsonl(newcomer / "new" / "dir" / "all.jsonl")] == [
        ("data/a.h5", 0),
        ("data/a.h5", 1),
        ("data/a.h5", 2),
        ("data/deeper/b.hdf5", 0),
        ("data/deeper/b.hdf5", 1),
    ]

    absolute = run("score", f"file://{newcomer / 'data' / 'a.h5'}", "-o", "abs.jsonl")
    assert absolute.exit_code == 0, absolute.output
    assert len(jsonl(newcomer / "abs.jsonl")) == 3

    (newcomer / "buckets" / "incoming").mkdir(parents=True)
    write_h5(newcomer / "buckets" / "incoming" / "c.h5", clips=4, classes=12)
    bucket = run("score", "file://incoming/", "-o", "bucket.jsonl")
    assert bucket.exit_code == 0, bucket.output
    assert {r["source"] for r in jsonl(newcomer / "bucket.jsonl")} == {"incoming/c.h5"}


def test_score_of_nothing_is_an_error_not_an_empty_success(newcomer: Path) -> None:
    assert "no such file or folder" in one_line_error(run("score", "missing.h5", "-o", "x.jsonl"))
    (newcomer / "empty").mkdir()
    assert "no .h5 or .hdf5 file there" in one_line_error(run("score", "empty", "-o", "x.jsonl"))
    assert not (newcomer / "x.jsonl").exists()
    folder_as_output = run("score", "empty", "-o", "empty")
    assert folder_as_output.exit_code == 2 and "is a directory" in folder_as_output.output


def test_search_defaults_to_the_configured_results_and_names_the_results_object(newcomer: Path) -> None:
    write_h5(newcomer / "buckets" / "incoming" / "a.h5", clips=4, classes=12)
    before = one_line_error(run("search", "Class 1"))  # nothing scored yet: say where results were looked for
    assert "file://results: no such bucket" in before and "point --results at a results folder" in before
    (newcomer / "buckets" / "results").mkdir(parents=True)
    scored = run("score", "buckets/incoming/a.h5", "-o", "buckets/results/predictions/incoming/a.h5.jsonl")
    assert scored.exit_code == 0, scored.output
    label = jsonl(newcomer / "buckets/results/predictions/incoming/a.h5.jsonl")[0]["labels"][0]["name"]  # type: ignore[index]

    configured = run("search", str(label), "--min-score", "0", "--json")  # no --results: AUDIOSET_RESULTS_*
    assert configured.exit_code == 0, configured.output
    hits = [json.loads(line) for line in configured.stdout.splitlines()]
    assert hits and hits[0]["results"] == "file://results/predictions/incoming/a.h5.jsonl"
    assert hits[0]["source"] == "buckets/incoming/a.h5"

    by_path = run("search", str(label), "--min-score", "0", "--results", "buckets/results/predictions/")
    assert by_path.exit_code == 0, by_path.output
    assert "(buckets/results/predictions/incoming/a.h5.jsonl)" in by_path.stdout
    absolute = run("search", str(label), "--min-score", "0", "--results", f"file://{newcomer}/buckets/results/")
    assert absolute.exit_code == 0 and len(absolute.stdout.splitlines()) == len(hits), absolute.output


def test_evaluate_creates_the_folders_of_its_outputs(newcomer: Path, tiny_model: Path) -> None:
    write_h5(newcomer / "eval" / "part1.h5", clips=6, classes=12)
    write_h5(newcomer / "eval" / "part2.h5", clips=6, classes=12, seed=2)
    model = f"file://{tiny_model}"  # options that name a local file or folder take file:/// too
    result = run("evaluate", model, "eval", "--plot", "plots/ap.png", "--per-class", "csv/ap.csv", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["clips"] == 12  # the folder's two files
    assert (newcomer / "plots" / "ap.png").read_bytes()[:4] == b"\x89PNG"
    assert (newcomer / "csv" / "ap.csv").read_text().startswith("index,mid,name")


def test_evaluate_names_the_file_that_does_not_fit_the_model(newcomer: Path, tiny_model: Path) -> None:
    write_h5(newcomer / "eval" / "good.h5", clips=6, classes=12)
    write_h5(newcomer / "short.h5", clips=6, frames=7, classes=12)
    write_h5(newcomer / "other.h5", clips=6, classes=5)
    (newcomer / "junk.h5").write_bytes(b"not hdf5")
    cases = {
        "short.h5": "FrameCountError: short.h5: clips of 7 frames, the first file's have 10",
        "other.h5": "LayoutError: other.h5: labels for 5 classes per clip; the model predicts 12",
        "junk.h5": "NotHDF5Error: junk.h5: not an HDF5 file",
    }
    for name, expected in cases.items():
        assert expected in one_line_error(run("evaluate", str(tiny_model), "eval/good.h5", name))


def test_a_bucket_url_without_an_endpoint_says_which_setting_to_set(newcomer: Path) -> None:
    line = one_line_error(run("score", "cos://bucket/x.h5"), 2)
    assert "need AUDIOSET_COS_ENDPOINT" in line


def test_search_with_cos_and_no_credentials_says_which_settings_to_set(
    s3_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("AUDIOSET_COS_ENDPOINT", s3_endpoint)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    line = one_line_error(run("search", "Class 1", "--results", "cos://results/predictions/"))
    assert "AUDIOSET_COS_ACCESS_KEY_ID" in line and "Transient" not in line


# --- 3. no silent success, no empty job ------------------------------------------------------------


def test_enqueue_of_nothing_fails_and_leaves_no_job(
    newcomer: Path, redis_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from audioset_batch.jobs.factory import open_job_store

    monkeypatch.setenv("AUDIOSET_BROKER_URL", redis_db)
    (newcomer / "buckets" / "incoming" / "day1").mkdir(parents=True)
    assert "no such file or folder" in one_line_error(run("enqueue", "buckets/incoming/day1/nonexistent.h5", "--wait"))
    assert "no .h5 or .hdf5 file there" in one_line_error(run("enqueue", "file://incoming/day1/"))
    assert "no such bucket" in one_line_error(run("enqueue", "file://nobucket/x.h5"))
    write_h5(newcomer / "elsewhere.h5")
    assert "AUDIOSET_LOCAL_ROOT" in one_line_error(run("enqueue", "elsewhere.h5"))
    assert open_job_store(redis_db).list_jobs(None) == []

    assert "nothing was enqueued" in one_line_error(run("watch", "buckets/incoming/day1/", "--once"))
    assert "no such bucket" in one_line_error(run("watch", "file://nobucket/", "--once"))
    assert open_job_store(redis_db).list_jobs(None) == []


# --- 4. one line for every user error --------------------------------------------------------------


def test_broker_down_is_one_line_naming_the_setting(newcomer: Path) -> None:
    (newcomer / "buckets" / "incoming").mkdir(parents=True)
    write_h5(newcomer / "buckets" / "incoming" / "a.h5")
    for args in (("jobs", "list"), ("jobs", "status", "x"), ("enqueue", "buckets/incoming/a.h5")):
        line = one_line_error(run(*args))
        assert "cannot reach redis://127.0.0.1:1/0" in line and "AUDIOSET_BROKER_URL" in line, args


def test_training_errors_are_one_line_and_a_changed_setting_is_named(newcomer: Path, tiny_model: Path) -> None:
    from model.artifact import read_manifest

    classes = len(read_manifest(tiny_model).classes)
    write_h5(newcomer / "train.h5", clips=40, classes=classes)
    base = ["train", "train.h5", "--output", "run", "--iterations", "2", "--eval-every", "1", "--batch-size", "16"]
    first = run(*base, "--quiet")
    assert first.exit_code == 0, first.output
    changed = one_line_error(run(*base, "--learning-rate", "0.01", "-q"))
    assert "learning-rate: 0.001 -> 0.01" in changed and "--output" in changed

    (newcomer / "bad.csv").write_text("a,b\n1,2\n")
    assert "index,mid,display_name" in one_line_error(run(*base[:3], "run2", "--labels", "bad.csv"))
    write_h5(newcomer / "own.h5", clips=40, classes=3)  # the user's own classes, and no class list given
    own = one_line_error(run("train", "own.h5", "--output", "run3", "--iterations", "2"))
    assert "labelled with 3 classes" in own and "--labels FILE" in own and f"the model's {classes} classes" in own
    assert not (newcomer / "run3").exists()


# --- 5. --wait --timeout, and a warning when nothing consumes the queue ----------------------------


def test_wait_times_out_and_warns_when_no_worker_consumes(
    newcomer: Path, redis_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cli import queue

    monkeypatch.setattr(queue, "IDLE_BEFORE_ASKING", 0.5)
    monkeypatch.setenv("AUDIOSET_BROKER_URL", redis_db)
    monkeypatch.setenv("AUDIOSET_QUEUE", "nobody")
    (newcomer / "buckets" / "incoming").mkdir(parents=True)
    write_h5(newcomer / "buckets" / "incoming" / "a.h5")
    result = run("enqueue", "buckets/incoming/", "--job", "nov", "--wait", "--timeout", "4s")
    assert result.exit_code == queue.TIMED_OUT, result.output
    assert "no worker consumes queue 'nobody'" in result.output
    assert "still pending after 4s" in result.output

    # 7. a job name works where its id does
    by_name = run("jobs", "status", "nov", "--json")
    assert by_name.exit_code == 0, by_name.output
    assert json.loads(by_name.stdout)["name"] == "nov" and json.loads(by_name.stdout)["pending"] == 1
    assert json.loads(by_name.stdout)["id"] == result.stdout.split()[0]
    assert run("jobs", "delete", "nov").exit_code == 0
    assert one_line_error(run("jobs", "status", "nov"), 2) == "error: no job 'nov' (see `audioset jobs list`)"


# --- 6. quiet by default; JSON logs are JSON only ---------------------------------------------------


def test_no_tensorflow_noise_and_json_logs_are_json_only(newcomer: Path, tiny_model: Path) -> None:
    path = write_h5(newcomer / "a.h5", clips=3, classes=12)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AUDIOSET_", "TF_CPP"))}
    env |= {"AUDIOSET_MODEL_PATH": str(tiny_model), "AUDIOSET_PRECISION": "int8"}  # int8: TFLite talks most
    command = [sys.executable, "-m", "cli", "score", str(path), "-o", str(newcomer / "o.jsonl")]

    text = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert text.returncode == 0, text.stderr
    ours = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (INFO|WARNING) audioset\.model MainProcess: ")
    lines = [line for line in text.stderr.splitlines() if not ours.match(line)]  # e.g. int8 on a CPU without VNNI
    assert [json.loads(line)["clips"] for line in lines] == [3], text.stderr

    env |= {"AUDIOSET_LOG_FORMAT": "json", "AUDIOSET_TOPK": "3"}
    as_json = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert as_json.returncode == 0, as_json.stderr
    lines = [json.loads(line) for line in as_json.stderr.splitlines()]  # every line is JSON
    lines = [line for line in lines if line.get("logger") != "audioset.model"]  # the CPU's own notes, if any
    assert [line["level"] for line in lines] == ["WARNING", "INFO"], lines
    assert "did you mean AUDIOSET_TOP_K?" in lines[0]["message"] and lines[1]["clips"] == 3

    failing = subprocess.run(
        [*command[:4], "missing.h5"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert failing.returncode == 1
    levels = [json.loads(line) for line in failing.stderr.splitlines()]
    assert [line["level"] for line in levels if line.get("logger") != "audioset.model"] == ["WARNING", "ERROR"]


# --- 7. local mode connects ------------------------------------------------------------------------


def test_jobs_find_the_local_run_state_when_redis_is_not_there(newcomer: Path) -> None:
    from audioset_batch.jobs.factory import open_job_store
    from cli.embedded import embedded_state_file

    state = embedded_state_file(newcomer / "buckets")
    state.parent.mkdir(parents=True)
    store = open_job_store(f"sqlite:///{state}")
    job = store.create_job(name="local")
    result = run("jobs", "list")
    assert result.exit_code == 0, result.output
    assert "reading the local `audioset run` state" in result.output and job in result.stdout
    assert run("jobs", "status", "local").exit_code == 0


def test_jobs_read_the_local_run_state_where_it_ran_whatever_listens_on_the_broker_port(
    newcomer: Path, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Redis on the broker's port once answered instead, with "no jobs"; AUDIOSET_STATE_URL still chooses."""
    from audioset_batch.jobs.factory import open_job_store
    from audioset_batch.settings import get_settings
    from cli.embedded import embedded_state_file

    state = embedded_state_file(newcomer / "buckets")
    state.parent.mkdir(parents=True)
    job = open_job_store(f"sqlite:///{state}").create_job(name="local")
    monkeypatch.setenv("AUDIOSET_BROKER_URL", redis_server.db_url(5))  # a live Redis, holding no jobs
    get_settings.cache_clear()
    result = run("jobs", "list")
    assert result.exit_code == 0 and job in result.stdout, result.output
    assert "reading the local `audioset run` state" in result.stderr
    monkeypatch.setenv("AUDIOSET_STATE_URL", redis_server.db_url(5))
    get_settings.cache_clear()
    chosen = run("jobs", "list")
    assert chosen.exit_code == 0 and job not in chosen.stdout and "local `audioset run` state" not in chosen.output


# --- 9. doctor and settings tell the truth ---------------------------------------------------------


def test_doctor_creates_nothing_and_refuses_what_it_cannot_check(
    newcomer: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AUDIOSET_BROKER_URL", "filesystem://")
    root = newcomer / "buckets"
    root.mkdir()
    missing = run("doctor")
    assert missing.exit_code == 1
    assert "FAIL  bucket results" in missing.output and f"mkdir {root / 'results'}" in missing.output
    assert "FAIL  results write: not tried" in missing.output
    assert sorted(p.name for p in root.iterdir()) == []  # no bucket, no broker folder, no state file

    (root / "results").mkdir()
    passing = run("doctor")
    assert "PASS  results write" in passing.output, passing.output
    assert sorted(p.name for p in root.rglob("*")) == ["results"]  # the probe and its prefix folder are gone

    monkeypatch.setenv("AUDIOSET_BROKER_URL", "amqp://localhost")
    assert "unsupported broker amqp://" in run("doctor").output


def test_settings_validate_urls_mask_passwords_and_warn_on_typos(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUDIOSET_COS_ENDPOINT", "not-a-url")
    bad = run("config")
    assert bad.exit_code == 2 and "AUDIOSET_COS_ENDPOINT: " in bad.output and "http(s) URL" in bad.output
    monkeypatch.delenv("AUDIOSET_COS_ENDPOINT")

    monkeypatch.setenv("AUDIOSET_BROKER_URL", "redis://:s3cr3t-pw@127.0.0.1:1/0")
    monkeypatch.setenv("AUDIOSET_TOPK", "9")
    shown = run("config", "--json")
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout)["AUDIOSET_BROKER_URL"] == "redis://:***@127.0.0.1:1/0"
    assert "s3cr3t-pw" not in shown.output
    assert "AUDIOSET_TOPK is not a setting and is ignored; did you mean AUDIOSET_TOP_K?" in shown.output


# --- 10. smaller items -----------------------------------------------------------------------------


def test_folder_bucket_results_respect_the_umask(newcomer: Path) -> None:
    from audioset_batch.storage.local_store import LocalStore
    from model.atomic_files import process_umask

    (newcomer / "results").mkdir()
    LocalStore(newcomer).put_bytes(b"{}", "results", "predictions/a.jsonl")
    mode = stat.S_IMODE((newcomer / "results" / "predictions" / "a.jsonl").stat().st_mode)
    assert mode == 0o666 & ~process_umask()
    assert mode & stat.S_IRGRP  # under the usual 022 or 002: the group can read results


def test_native_output_is_silenced_only_inside_the_block(
    capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from model import native_logs

    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3"))  # restored after

    with pytest.raises(RuntimeError, match="still raised"), native_logs.native_stderr_silenced():
        os.write(2, b"I0000 oneDNN chatter\n")
        with native_logs.native_stderr_silenced():  # nested (a silenced block importing TensorFlow)
            os.write(2, b"W0000 more chatter\n")
        raise RuntimeError("still raised")
    os.write(2, b"after\n")
    assert capfd.readouterr().err == "after\n"
    native_logs.show_native_logs(True)
    try:
        with native_logs.native_stderr_silenced():
            os.write(2, b"debug shows it\n")
    finally:
        native_logs.show_native_logs(False)
    assert capfd.readouterr().err == "debug shows it\n"


def test_a_data_file_given_where_the_model_goes_says_the_model_is_a_folder(newcomer: Path) -> None:
    write_h5(newcomer / "data.h5", clips=4, classes=12)
    result = run("evaluate", "data.h5")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "'data.h5' is a file; a model is a folder holding model.keras and manifest.json" in result.output
    scored = run("score", "data.h5", "--model", "data.h5")
    assert scored.exit_code == 2 and "is a file; a model is a folder" in scored.output
