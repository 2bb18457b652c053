"""Every other way in: the model artifact, training specs and tasks, the watcher's folders, Redis-list payloads.

Each case records its outcome in the security report.
"""

from __future__ import annotations

import io
import json
import shutil
import time
import zipfile
from pathlib import Path

import h5py
import pytest

from audioset_batch.errors import ConfigError, SourceNotAllowedError
from audioset_batch.jobs.factory import open_job_store
from audioset_batch.settings import load_settings
from audioset_batch.storage.local_store import LocalStore
from audioset_batch.storage.object_store import InvalidObjectKeyError
from audioset_batch.training.runs import TrainingSpec, check_queued_locations, execute, new_run_id
from model.artifact import MANIFEST_NAME, WEIGHTS_NAME, load, sha256_file
from model.artifact_errors import UnsafeArtifactError
from producers.notifications import MalformedEventError, parse_events
from tests.conftest import Stack, WorkerProcess
from tests.faults.conftest import check
from worker.app import make_app
from worker.config import TRAIN_TASK


def outcome(call: object) -> str:
    try:
        call()  # type: ignore[operator]
    except Exception as exc:
        return type(exc).__name__
    return "accepted"


def rewrite_archive(artifact: Path, change: object) -> None:
    """Rewrite model.keras through ``change(members)`` and re-sign the manifest, as an attacker with write access
    would."""
    weights = artifact / WEIGHTS_NAME
    with zipfile.ZipFile(weights) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    change(members)  # type: ignore[operator]
    with zipfile.ZipFile(weights, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    manifest = json.loads((artifact / MANIFEST_NAME).read_text())
    manifest["sha256"] = sha256_file(weights)
    (artifact / MANIFEST_NAME).write_text(json.dumps(manifest))


@pytest.fixture
def artifact(tiny_model: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "artifact"
    shutil.copytree(tiny_model, copy)
    return copy


def test_shipped_shape_artifact_loads(artifact: Path) -> None:
    model, manifest = load(artifact)
    assert manifest.frames == 10 and model.output_shape[1] == len(manifest.classes)


def test_archive_member_with_a_path_is_refused(artifact: Path) -> None:
    rewrite_archive(artifact, lambda members: members.update({"../../outside.txt": b"x"}))
    assert check("model archive member '../../outside.txt'", "UnsafeArtifactError", outcome(lambda: load(artifact))).ok


def test_weights_linking_to_another_file_are_refused(artifact: Path, tmp_path: Path) -> None:
    def link_out(members: dict[str, bytes]) -> None:
        buffer = io.BytesIO(members["model.weights.h5"])
        with h5py.File(buffer, "a") as f:
            f["leak"] = h5py.ExternalLink(str(tmp_path / "other.h5"), "/x")
        members["model.weights.h5"] = buffer.getvalue()

    rewrite_archive(artifact, link_out)
    assert check("model weights with an external link", "UnsafeArtifactError", outcome(lambda: load(artifact))).ok


def test_symlinked_manifest_is_refused(artifact: Path, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere.json"
    shutil.move(artifact / MANIFEST_NAME, outside)
    (artifact / MANIFEST_NAME).symlink_to(outside)
    with pytest.raises(UnsafeArtifactError, match="symlink"):
        load(artifact)
    check("model manifest symlinked outside its folder", "UnsafeArtifactError", "UnsafeArtifactError")


def test_training_specs_cannot_reach_outside_the_local_root_or_allow_list(tmp_path: Path) -> None:
    settings = load_settings(local_root=tmp_path / "root", allowed_sources="incoming")
    (tmp_path / "root").mkdir()

    def spec(**raw: object) -> TrainingSpec:
        return TrainingSpec.from_json({"data": ["cos://incoming/train.h5"], **raw})

    cases = {
        "training spec: data /etc/passwd": (lambda: check_queued_locations(spec(data="/etc/passwd"), settings)),
        "training spec: data ../../x.h5": (lambda: check_queued_locations(spec(data="../../x.h5"), settings)),
        "training spec: labels outside the local root": (
            lambda: check_queued_locations(spec(labels="/root/.ssh/id_rsa"), settings)
        ),
        "training spec: output outside the local root": (
            lambda: check_queued_locations(spec(output="/etc/cron.d"), settings)
        ),
        "training spec: model name ../../x": (lambda: spec(name="../../x")),
    }
    for case, call in cases.items():
        assert check(case, "ConfigError", outcome(call)).ok
    assert check(
        "training spec: data in a bucket outside the allow-list",
        "SourceNotAllowedError",
        outcome(lambda: check_queued_locations(spec(data="cos://other/x.h5"), settings)),
    ).ok
    check_queued_locations(spec(data="sets/train.h5", output="runs"), settings)  # inside the root: fine
    assert issubclass(SourceNotAllowedError, InvalidObjectKeyError)


def test_run_ids_are_generated_ids_never_paths(tmp_path: Path) -> None:
    settings = load_settings(local_root=tmp_path / "root")
    store = open_job_store(f"sqlite:///{tmp_path / 'state.db'}")
    raw = TrainingSpec.from_json({"data": ["x.h5"]}).to_json()
    for bad in ("../../../tmp/evil", "train-1/../../x", ""):
        with pytest.raises(ConfigError, match="not one this service generates"):
            execute(bad, raw, settings, store)
    assert not (tmp_path / "root").exists() and not list(tmp_path.glob("**/evil"))
    assert check("training run id '../../../tmp/evil'", "ConfigError", "ConfigError").ok
    assert new_run_id().startswith("train-")


@pytest.mark.integration
def test_training_task_on_the_scoring_queue_is_refused(stack: Stack, worker: WorkerProcess, tmp_path: Path) -> None:
    run_id = new_run_id()
    spec = TrainingSpec.from_json({"data": ["x.h5"], "iterations": 1}).to_json()
    result = make_app(stack.settings()).send_task(TRAIN_TASK, args=[run_id, spec], queue=stack.env["AUDIOSET_QUEUE"])
    refused = "Received unregistered task of type 'audioset.train_model'"  # a scoring worker does not know it
    deadline = time.monotonic() + 60
    while refused not in worker.text() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert check(
        "training task sent to the scoring queue", "refused", "refused" if refused in worker.text() else "ran"
    ).ok
    assert result.id and "[tasks]\n  . audioset.score_object\n\n" in worker.text()  # the only task registered


def test_watcher_never_lists_or_reads_through_symlinks(tmp_path: Path) -> None:
    secret = tmp_path / "secret.h5"
    secret.write_bytes(b"not for you")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "b.h5").write_bytes(b"x")
    bucket = tmp_path / "root" / "incoming"
    bucket.mkdir(parents=True)
    (bucket / "real.h5").write_bytes(b"x")
    (bucket / "link.h5").symlink_to(secret)
    (bucket / "dir").symlink_to(tmp_path / "outside", target_is_directory=True)
    store = LocalStore(tmp_path / "root")
    assert [info.key for info in store.list("incoming")] == ["real.h5"]
    assert check(
        "watched folder: symlink to a file outside",
        "InvalidObjectKeyError",
        outcome(lambda: store.download("incoming", "link.h5", io.BytesIO())),
    ).ok
    assert check(
        "watched folder: symlinked directory",
        "InvalidObjectKeyError",
        outcome(lambda: store.download("incoming", "dir/b.h5", io.BytesIO())),
    ).ok


def test_oversized_redis_list_payload_is_malformed() -> None:
    payload = b'{"Records": [' + b" " * (2 * 1024 * 1024) + b"]}"
    with pytest.raises(MalformedEventError, match="over the 1048576-byte limit"):
        parse_events(payload)
    check("Redis-list payload of 2 MB", "MalformedEventError", "MalformedEventError")


def test_a_newline_in_a_key_cannot_split_a_text_log_line() -> None:
    import logging

    from audioset_batch.logs import TextFormatter

    record = logging.LogRecord(
        "audioset.worker", logging.ERROR, __file__, 1, "failed %s: %s", ("a\nFAKE b.h5", "x"), None
    )
    line = TextFormatter("%(levelname)s %(message)s").format(record)
    assert line == "ERROR failed a\\nFAKE b.h5: x"
    check("newline in an object key, text logs", "one line", "one line" if "\n" not in line else "split")


def test_enqueue_refuses_a_bucket_outside_the_allow_list_before_listing_it(tmp_path: Path) -> None:
    from producers.enqueue import expand

    settings = load_settings(local_root=tmp_path, allowed_sources="incoming/day1/")
    (tmp_path / "other").mkdir()
    observed = outcome(lambda: expand("file://other/", settings))
    assert check("enqueue of a bucket outside the allow-list", "SourceNotAllowedError", observed).ok


def test_no_message_repeats_a_password_in_a_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A broker URL with a bad port was echoed whole in the error; `config` and `doctor` printed an endpoint's
    ``user:pass@``; logs masked Redis passwords only."""
    import logging

    from click.testing import CliRunner

    from audioset_batch.logs import RedactingFilter, secrets_of
    from audioset_batch.settings import get_settings
    from cli import main

    secret = "s3cret-in-url"
    for bad in (f"redis://:{secret}@localhost:99999/0", f"redis://user:{secret}@:x/0", f"amqp://u:{secret}@h/"):
        with pytest.raises(ConfigError) as error:
            load_settings(broker_url=bad)
        observed = "leaked" if secret in str(error.value) else "password masked"
        assert check(f"invalid broker URL {bad.split(secret)[0]}…", "password masked", observed).ok
    with pytest.raises(ConfigError) as error:
        load_settings(cos_endpoint=f"ftp://user:{secret}@minio:9000")
    assert secret not in str(error.value) and "user:***@minio" in str(error.value)

    for name in ("AUDIOSET_BROKER_URL", "AUDIOSET_STATE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AUDIOSET_COS_ENDPOINT", f"http://user:{secret}@127.0.0.1:1")
    get_settings.cache_clear()
    shown = CliRunner().invoke(main, ["config"])
    assert "AUDIOSET_COS_ENDPOINT=http://user:***@127.0.0.1:1" in shown.output and secret not in shown.output
    settings = get_settings()
    get_settings.cache_clear()
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "endpoint %s down", (settings.cos_endpoint,), None)
    RedactingFilter(secrets_of(settings)).filter(record)
    assert check("COS endpoint password in a log line", "masked", "masked" if secret not in record.msg else "leaked").ok


def raw_message(task: str, args: list[object], kwargs: dict[str, object], delivery_info: dict[str, str]) -> bytes:
    """A Celery message as it sits in the Redis list, written by hand: anyone with the Redis password can."""
    import base64
    import uuid

    task_id = uuid.uuid4().hex
    body = json.dumps([args, kwargs, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}])
    return json.dumps(
        {
            "body": base64.b64encode(body.encode()).decode(),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": {"lang": "py", "task": task, "id": task_id, "root_id": task_id, "retries": 0},
            "properties": {
                "correlation_id": task_id,
                "delivery_mode": 2,
                "delivery_info": delivery_info,
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": uuid.uuid4().hex,
            },
        }
    ).encode()


@pytest.mark.integration
def test_forged_and_malformed_messages_are_refused_and_the_worker_goes_on(
    stack: Stack, worker: WorkerProcess, tmp_path: Path
) -> None:
    """A training message forged with routing_key 'training' trained on a scoring worker; one with no routing key
    crashed the consumer (KeyError) and was dropped; malformed arguments reached the task."""
    import redis

    from tests.faults.test_faults import run_job, upload
    from tests.helpers import wait_job

    queue = stack.env["AUDIOSET_QUEUE"]
    run_id = new_run_id()
    spec = TrainingSpec.from_json({"data": ["x.h5"], "iterations": 1}).to_json()
    client = redis.Redis.from_url(stack.env["AUDIOSET_BROKER_URL"])
    forged = {
        "training forged onto the scoring queue": raw_message(
            TRAIN_TASK, [run_id, spec], {}, {"exchange": queue, "routing_key": "training"}
        ),
        "training with no routing key": raw_message(TRAIN_TASK, [run_id, spec], {}, {"exchange": queue}),
        "scoring with no routing key": raw_message(
            "audioset.score_object", [f"cos://{stack.input_bucket}/nothing.h5"], {}, {"exchange": queue}
        ),
        "scoring with a number for a URL": raw_message(
            "audioset.score_object", [12345], {"job": ["x"]}, {"exchange": queue, "routing_key": queue}
        ),
        "scoring with unknown arguments": raw_message(
            "audioset.score_object", ["cos://a/b.h5"], {"shell": "rm -rf /"}, {"exchange": queue, "routing_key": queue}
        ),
        "an empty mapping": b"{}",
        "a message with no headers": json.dumps({"body": "eA==", "properties": {}}).encode(),
        "not JSON at all": b"not json",
    }
    for payload in forged.values():
        client.lpush(queue, payload)
    inputs = upload(stack, tmp_path, "after-forged", 2)
    status = wait_job(open_job_store(stack.settings().effective_state_url), run_job(stack, "after-forged"), 120)
    text = worker.text()
    assert status.scored == len(inputs), text[-3000:]
    assert text.count("Received unregistered task of type 'audioset.train_model'") == 2  # not even known here
    assert "Connection to broker lost" not in text and "KeyError('routing_key')" not in text
    assert text.count("refused a malformed scoring message") == 2
    assert "url: Input should be a valid string" in text and "shell: Extra inputs are not permitted" in text
    assert "nothing.h5: ObjectNotFoundError" in text  # the one with no routing key was still handled, not dropped
    assert text.count("that is not a task message") == 3 and "Unrecoverable error" not in text
    for case in forged:
        check(f"message: {case}", "refused, worker goes on", "refused, worker goes on")


def test_queued_training_limits_names_and_runs_whose_worker_died(tmp_path: Path) -> None:
    """`iterations: 1e14` and `batch_size: 1e9` were accepted (a hang at full CPU); `audioset ensemble --name`
    took '../' and newlines; a run whose worker died stayed `running` for ever."""
    from model.artifact import name_problem
    from model.train_config import TrainConfig, TrainConfigError

    for case, raw in {
        "iterations: 1e14": {"iterations": 1e14},
        "batch_size: 1e9": {"batch_size": 10**9},
        "hidden_units: 10**7": {"hidden_units": 10**7},
        "name: ../../x": {"name": "../../x"},
        "version with a newline": {"version": "1\nFAKE"},
    }.items():
        assert check(f"training spec {case}", "ConfigError", outcome(lambda raw=raw: spec_from(raw))).ok
        with pytest.raises(TrainConfigError):
            TrainConfig(**raw)
    for bad in ("../x", "a\nb", "\x1b[31mred", "a" * 101, "..", ""):
        assert name_problem(bad) is not None, bad
    assert name_problem("audioset-fla-mla") is None and name_problem("7", "version") is None

    from audioset_batch.training.runs import STALE_AFTER_SECONDS, observed

    store = open_job_store(f"sqlite:///{tmp_path / 'state.db'}")
    run_id = new_run_id()
    store.put_run(run_id, {"id": run_id, "status": "running", "heartbeat": 1000.0})
    assert observed(store, store.get_run(run_id), now=1000.0 + STALE_AFTER_SECONDS - 1)["status"] == "running"
    lost = observed(store, store.get_run(run_id), now=1000.0 + STALE_AFTER_SECONDS + 1)
    assert lost["status"] == "lost" and "no heartbeat since 1970-01-01T00:16:40" in lost["error"]
    assert store.get_run(run_id)["status"] == "lost"  # recorded, so every reader agrees


def spec_from(raw: dict[str, object]) -> object:
    return TrainingSpec.from_json({"data": ["x.h5"], **raw})


def test_ensemble_refuses_a_name_that_is_no_name(tiny_model: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from cli import main

    out = CliRunner().invoke(
        main, ["ensemble", str(tiny_model), str(tiny_model), "--output", str(tmp_path / "e"), "--name", "../x\n"]
    )
    assert out.exit_code == 1 and "must be 1-100 letters" in out.output and "Traceback" not in out.output
    assert not (tmp_path / "e").exists()


def test_a_class_list_named_by_url_is_read_through_the_one_location_rule(tmp_path: Path) -> None:
    """`labels: file://incoming/labels.csv` in a queued spec failed with FileNotFoundError 'file:/incoming/…'."""
    from audioset_batch.training.datasets import class_list

    (tmp_path / "incoming").mkdir()
    (tmp_path / "incoming" / "labels.csv").write_text("index,mid,display_name\n0,/m/a,Alpha\n1,/m/b,Beta\n")
    settings = load_settings(local_root=tmp_path)
    for location in ("file://incoming/labels.csv", str(tmp_path / "incoming" / "labels.csv")):
        assert [c.name for c in class_list(location, 2, settings)] == ["Alpha", "Beta"]
