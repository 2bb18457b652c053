"""Watcher and notification listener: unit tests for parsing, integration with real parts."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote_plus

import kombu.exceptions
import pytest
import redis

from audioset_batch.jobs.factory import open_job_store
from audioset_batch.storage.cos_store import CosStore
from producers.listener import Listener
from producers.notifications import EventFilter, MalformedEventError, ObjectEvent, parse_events
from producers.watcher import Watcher
from tests.conftest import ROOT, Stack, WorkerProcess, free_port, wait_for_port
from tests.helpers import wait_job, write_h5
from worker.app import make_app


def s3_record(bucket: str, key: str, etag: str = "abc", event: str = "s3:ObjectCreated:Put") -> dict[str, object]:
    return {
        "eventName": event,
        "s3": {"bucket": {"name": bucket}, "object": {"key": quote_plus(key, safe="/"), "eTag": etag, "size": 10}},
    }


def minio_access(bucket: str, key: str, etag: str = "abc") -> bytes:
    return json.dumps([{"Event": [s3_record(bucket, key, etag)], "EventTime": "2026-11-23T10:00:00Z"}]).encode()


def ibm_event(bucket: str, key: str, etag: str | None = None) -> bytes:
    note = {
        "bucket_name": bucket,
        "object_name": key,
        "object_length": "10",
        "event_type": "Object:Write",
        "request_id": "r1",
    }
    if etag:
        note["object_etag"] = etag
    return json.dumps({"bucket": bucket, "key": key, "operation": "Object:Write", "notification": note}).encode()


def test_parse_all_shapes_and_decode_keys() -> None:
    key = "dir one/sub+dir/ünïcode +1.h5"
    expected = ObjectEvent("b", key, "abc", 10, "ObjectCreated:Put")
    assert parse_events(json.dumps({"Records": [s3_record("b", key)]})) == [expected]
    assert parse_events(minio_access("b", key)) == [expected]
    assert parse_events(json.dumps(s3_record("b", key))) == [expected]
    ibm = parse_events(ibm_event("b", key, "e1"))
    assert ibm == [ObjectEvent("b", key, "e1", 10, "Object:Write")]


@pytest.mark.parametrize(
    "payload, reason",
    [
        (b"{not json", "not valid JSON"),
        (b'"a string"', "expected a JSON object"),
        (b'{"hello": 1}', "unknown notification shape"),
        (b'{"Records": [{"eventName": "x"}]}', "missing 's3'"),
        (b'{"Records": "nope"}', "must be a list"),
        (b'{"notification": {}}', "bucket and key"),
    ],
)
def test_malformed_payloads_say_why(payload: bytes, reason: str) -> None:
    with pytest.raises(MalformedEventError, match=reason):
        parse_events(payload)


def test_filter() -> None:
    f = EventFilter(prefix="in/")
    assert f.accepts(ObjectEvent("b", "in/a.H5", None, None, "ObjectCreated:Put"))
    assert not f.accepts(ObjectEvent("b", "out/a.h5", None, None, "ObjectCreated:Put"))
    assert not f.accepts(ObjectEvent("b", "in/a.txt", None, None, "ObjectCreated:Put"))
    assert not f.accepts(ObjectEvent("b", "in/a.h5", None, None, "ObjectRemoved:Delete"))
    assert f.accepts(ObjectEvent("b", "in/a.hdf5", None, None, "Object:Write"))


def results_exist(stack: Stack, keys: list[str], timeout: float = 90) -> bool:
    store = CosStore(stack.settings())
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(
            store.get_bytes(stack.results_bucket, f"predictions/{stack.input_bucket}/{k}.summary.json") for k in keys
        ):
            return True
        time.sleep(0.3)
    return False


@pytest.mark.integration
def test_watcher_new_objects_restart_and_overwrite(stack: Stack, worker: WorkerProcess, tmp_path: Path) -> None:
    settings = stack.settings()
    store = CosStore(settings)
    app, jobs = make_app(settings), open_job_store(settings.effective_state_url)
    url = f"cos://{stack.input_bucket}/watched/"
    watcher = Watcher(url, settings, app, jobs)
    assert watcher.poll_once() == 0
    store.upload_file(write_h5(tmp_path / "a.h5", clips=3, seed=1), stack.input_bucket, "watched/a.h5")
    store.upload_file(write_h5(tmp_path / "b.h5", clips=4, seed=2), stack.input_bucket, "watched/deep/b.hdf5")
    store.put_bytes(b"x", stack.input_bucket, "watched/ignore.csv")
    assert watcher.poll_once() == 2
    assert watcher.poll_once() == 0
    restarted = Watcher(url, settings, app, jobs)
    assert restarted.job == watcher.job and restarted.poll_once() == 0
    assert jobs.status(watcher.job).queue == settings.queue
    assert results_exist(stack, ["watched/a.h5", "watched/deep/b.hdf5"])

    store.upload_file(write_h5(tmp_path / "a2.h5", clips=6, seed=5), stack.input_bucket, "watched/a.h5")
    assert restarted.poll_once() == 1
    status = wait_job(jobs, watcher.job)
    assert (status.total, status.scored) == (3, 3)
    body = store.get_bytes(stack.results_bucket, f"predictions/{stack.input_bucket}/watched/a.h5.jsonl") or b""
    assert len(body.splitlines()) == 6

    # The sweep drops finished versions that are no longer listed: the overwritten a.h5, then the deleted b.hdf5.
    restarted.sweep_every = 1
    assert restarted.poll_once() == 0
    a_now = [item for item in jobs.items(watcher.job) if "/watched/a.h5#" in item]
    assert len(a_now) == 1 and (jobs.status(watcher.job).total, jobs.status(watcher.job).scored) == (2, 2)
    store.delete(stack.input_bucket, "watched/deep/b.hdf5")
    assert restarted.poll_once() == 0
    assert jobs.items(watcher.job) == {a_now[0]: "scored"}
    status = jobs.status(watcher.job)
    assert (status.total, status.scored, status.pending) == (1, 1, 0)
    store.upload_file(write_h5(tmp_path / "b.h5", clips=4, seed=2), stack.input_bucket, "watched/deep/b.hdf5")
    assert restarted.poll_once() == 1  # back again: offered again (the worker skips it: same ETag, results exist)


@pytest.mark.integration
def test_minio_payloads_on_redis_list_are_scored_once(
    stack: Stack, worker: WorkerProcess, tmp_path: Path, redis_db: str
) -> None:
    settings = stack.settings()
    store = CosStore(settings)
    keys = ["plain.h5", "with space/a b.h5", "plus+sign/c+d.h5", "ünï/çødé/é.h5", "a/b/c/d/nested.h5"]
    etags = {}
    for i, key in enumerate(keys):
        store.upload_file(write_h5(tmp_path / f"{i}.h5", clips=2, seed=i), stack.input_bucket, key)
        etags[key] = store.stat(stack.input_bucket, key).etag
    client = redis.Redis.from_url(redis_db)
    client.rpush("bucketevents", b"{garbage", b'{"unknown": true}')
    for key in keys:
        for _ in range(3):  # duplicates, as at-least-once delivery produces
            client.rpush("bucketevents", minio_access(stack.input_bucket, key, etags[key]))
    jobs = open_job_store(settings.effective_state_url)
    before = jobs.counters()
    listener = Listener(settings, make_app(settings), jobs)
    with consuming(listener, redis_db, "bucketevents"):
        assert results_exist(stack, keys)
        wait_until(lambda: not client.llen("bucketevents"))
    # one job per event source and queue (this stack's queue is its own); its items are checked by this bucket
    assert listener.job != Listener(settings.model_copy(update={"queue": "other"}), make_app(settings), jobs).job
    assert jobs.status(listener.job).queue == settings.queue
    own_prefix = f"cos://{stack.input_bucket}/"
    wait_until(lambda: "pending" not in jobs.items(listener.job, prefix=own_prefix).values(), timeout=120)
    own = jobs.items(listener.job, prefix=own_prefix)
    assert len(own) == len(keys) and set(own.values()) == {"scored"}
    after = jobs.counters()
    delta = {k: v - before.get(k, 0) for k, v in after.items()}
    assert delta["listener.rejected"] == 2 and delta["listener.enqueued"] == len(keys)
    assert delta["listener.duplicates"] == 2 * len(keys)
    assert client.llen("bucketevents") == 0 and client.llen("bucketevents:processing") == 0
    assert worker.text().count("Task audioset.score_object") >= len(keys)


@pytest.mark.integration
def test_listener_job_keeps_one_item_per_object_present(stack: Stack) -> None:
    settings = stack.settings()
    jobs = open_job_store(settings.effective_state_url)
    listener = Listener(settings, make_app(settings), jobs)
    bucket = stack.input_bucket

    def items() -> dict[str, str]:
        return jobs.items(listener.job, prefix=f"cos://{bucket}/")

    def finish_all() -> None:  # what the workers do once the files are scored
        for item in jobs.items(listener.job, "pending", prefix=f"cos://{bucket}/"):
            jobs.mark(listener.job, item, "scored")

    for key in ("a.h5", "[a].h5", "b.h5"):
        listener.handle(minio_access(bucket, key, "v1"))
    finish_all()
    # An overwrite (new ETag) replaces the finished item of the old version.
    assert listener.handle(minio_access(bucket, "a.h5", "v2")).enqueued == 1
    assert items() == {
        f"cos://{bucket}/a.h5#v2": "pending",
        f"cos://{bucket}/[a].h5#v1": "scored",
        f"cos://{bucket}/b.h5#v1": "scored",
    }
    # A removal drops the object's finished items (the glob-like key drops only its own) and enqueues nothing.
    removal = {"Records": [s3_record(bucket, "[a].h5", event="s3:ObjectRemoved:Delete")]}
    assert listener.handle(json.dumps(removal)).to_json() == {
        "events": 1,
        "enqueued": 0,
        "duplicates": 0,
        "filtered": 0,
        "missing": 0,
        "removed": 1,
    }
    assert set(items()) == {f"cos://{bucket}/a.h5#v2", f"cos://{bucket}/b.h5#v1"}
    # A version still being scored stays (its task will mark it); IBM's delete events count as removals too.
    delete = json.loads(ibm_event(bucket, "a.h5", "v2"))
    delete["operation"] = delete["notification"]["event_type"] = "Object:Delete"
    assert listener.handle(json.dumps(delete)).removed == 1
    assert items()[f"cos://{bucket}/a.h5#v2"] == "pending"
    # The job id is the one listeners had before removal events were handled, so upgrading keeps the job.
    assert (
        repr(EventFilter())
        == "EventFilter(prefix='', suffixes=('.h5', '.hdf5'), event_types=('ObjectCreated', 'Object:Write'))"
    )
    # Removal of a key the filter does not watch is filtered, as a creation would be.
    other = {"Records": [s3_record(bucket, "notes.txt", event="s3:ObjectRemoved:Delete")]}
    assert listener.handle(json.dumps(other)).filtered == 1
    assert set(items()) == {f"cos://{bucket}/a.h5#v2", f"cos://{bucket}/b.h5#v1"}
    finish_all()  # no worker runs here: leave nothing pending in the listener job that other tests share


@contextlib.contextmanager
def consuming(listener: Listener, redis_url: str, key: str) -> Iterator[threading.Thread]:
    """The listener's Redis-list consumer, running on a thread for the block's duration."""
    stop = threading.Event()
    thread = threading.Thread(target=listener.run_redis_list, args=(redis_url, key, stop), daemon=True)
    thread.start()
    try:
        yield thread
    finally:
        stop.set()
        thread.join(10)


def wait_until(condition: Callable[[], object], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.1)


def dead_broker_settings(stack: Stack, **overrides: object):  # type: ignore[no-untyped-def]
    """The stack's settings with a broker on a port where nothing listens."""
    return stack.settings(broker_url=f"redis://127.0.0.1:{free_port()}/0", **overrides)


@pytest.mark.integration
def test_a_task_the_broker_refuses_leaves_no_pending_item_behind(stack: Stack) -> None:
    from audioset_batch.storage.object_store import ObjectURL
    from producers.enqueue import send

    settings = stack.settings()
    jobs = open_job_store(settings.effective_state_url)
    job = jobs.create_job()
    urls = [ObjectURL("cos", stack.input_bucket, f"k{i}.h5") for i in range(3)]
    with pytest.raises(kombu.exceptions.OperationalError):
        send(make_app(dead_broker_settings(stack)), jobs, job, urls, settings)
    assert jobs.items(job) == {} and jobs.status(job).total == 0  # nothing stranded as 'pending'
    assert send(make_app(settings), jobs, job, urls, settings) == 3  # the retry sends every one
    assert set(jobs.items(job, "pending")) == {str(u) for u in urls}

    CosStore(settings).put_bytes(b"not scored here", stack.input_bucket, "watched-outage/a.h5")
    outage = make_app(dead_broker_settings(stack))
    watcher = Watcher(f"cos://{stack.input_bucket}/watched-outage/", settings, outage, jobs)
    with pytest.raises(kombu.exceptions.OperationalError):
        watcher.poll_once()
    watcher.app = make_app(settings)  # the broker is back: the next poll sends what the failed one could not
    assert watcher.poll_once() == 1 and watcher.poll_once() == 0


@pytest.mark.integration
def test_redis_list_sets_aside_a_payload_that_fails_for_good_and_goes_on(
    stack: Stack, tmp_path: Path, redis_db: str, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "buckets"
    write_h5(root / "incoming" / "good.h5", clips=2)
    settings = stack.settings(local_root=str(root))
    jobs = open_job_store(settings.effective_state_url)
    client = redis.Redis.from_url(redis_db)
    bad = ibm_event("incoming", "../outside.h5")  # no etag: the listener stats the key, which is refused
    good = ibm_event("incoming", "good.h5")
    client.rpush("events", bad, good)
    listener = Listener(settings, make_app(settings), jobs, scheme="file")
    before = jobs.counters()
    with caplog.at_level("ERROR", logger="audioset.listener"), consuming(listener, redis_db, "events"):
        wait_until(lambda: not (client.llen("events") or client.llen("events:processing")))
    assert client.lrange("events:failed", 0, -1) == [bad]  # set aside, not lost and not blocking
    assert [item.split("#")[0] for item in jobs.items(listener.job) if item.startswith("file://incoming/")] == [
        "file://incoming/good.h5"
    ]
    after = jobs.counters()
    assert after["listener.failed"] - before.get("listener.failed", 0) == 1
    assert after["listener.enqueued"] - before.get("listener.enqueued", 0) == 1
    assert "InvalidObjectKeyError" in caplog.text and "outside.h5" in caplog.text
    # Once the cause is fixed, the operator puts the payloads back on the list.
    command = ["listen", "--redis-list", "events", "--replay-failed", "--redis-url", redis_db]
    replay = subprocess.run(
        [sys.executable, "-m", "cli", *command],
        env={**os.environ, **stack.env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert replay.returncode == 0, replay.stderr
    assert "1 payload(s) moved" in replay.stderr
    assert client.lrange("events", 0, -1) == [bad] and client.llen("events:failed") == 0


@pytest.mark.integration
def test_redis_list_retries_through_a_broker_outage_without_losing_the_payload(
    stack: Stack, redis_db: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = dead_broker_settings(stack)
    jobs = open_job_store(settings.effective_state_url)
    client = redis.Redis.from_url(redis_db)
    payload = minio_access(stack.input_bucket, "outage.h5", "e1")
    client.rpush("events", payload)
    listener = Listener(settings, make_app(settings), jobs)
    with caplog.at_level("WARNING", logger="audioset.listener"), consuming(listener, redis_db, "events") as thread:
        wait_until(lambda: caplog.text.count("retrying in") >= 2)
        assert thread.is_alive()  # an outage does not kill the consumer
    assert caplog.text.count("retrying in") >= 2
    assert client.lrange("events:processing", 0, -1) == [payload] and client.llen("events:failed") == 0
    assert not [i for i in jobs.items(listener.job) if "outage.h5" in i]  # nothing registered that no task finishes


@pytest.mark.integration
def test_http_listener_accepts_both_shapes_and_rejects_bad_payloads(
    stack: Stack, worker: WorkerProcess, tmp_path: Path
) -> None:
    settings = stack.settings()
    store = CosStore(settings)
    store.upload_file(write_h5(tmp_path / "s3.h5", clips=2, seed=1), stack.input_bucket, "http/s3 style.h5")
    store.upload_file(write_h5(tmp_path / "ibm.h5", clips=3, seed=2), stack.input_bucket, "http/ibm+style.h5")
    port = free_port()
    env = {**os.environ, **stack.env}
    process = subprocess.Popen(
        [sys.executable, "-m", "cli", "listen", "--http", f"127.0.0.1:{port}"],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_port(port, 60)

        def post(body: bytes) -> tuple[int, dict[str, object]]:
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/", data=body, method="POST", headers={"Content-Type": "application/json"}
            )
            try:
                with urllib.request.urlopen(request, timeout=30) as response:
                    return response.status, json.loads(response.read())
            except urllib.error.HTTPError as error:
                return error.code, json.loads(error.read())

        def stats() -> dict[str, int]:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=10) as response:
                return dict(json.loads(response.read()))

        before = stats()
        code, body = post(b"not json at all")
        assert code == 400 and "not valid JSON" in str(body["error"])
        code, body = post(b'{"what": "ever"}')
        assert code == 400 and "unknown notification shape" in str(body["error"])
        s3_payload = json.dumps({"Records": [s3_record(stack.input_bucket, "http/s3 style.h5", "e-s3")]}).encode()
        code, body = post(s3_payload)
        assert code == 202 and body["enqueued"] == 1
        code, body = post(s3_payload)
        assert code == 202 and body["duplicates"] == 1 and body["enqueued"] == 0
        code, body = post(ibm_event(stack.input_bucket, "http/ibm+style.h5"))  # no etag: the listener looks it up
        assert code == 202 and body["enqueued"] == 1
        code, body = post(ibm_event(stack.input_bucket, "http/readme.txt"))
        assert code == 202 and body["filtered"] == 1
        assert results_exist(stack, ["http/s3 style.h5", "http/ibm+style.h5"])
        after = stats()
        assert after["listener.rejected"] - before.get("listener.rejected", 0) == 2
        assert after["listener.enqueued"] - before.get("listener.enqueued", 0) == 2
    finally:
        process.terminate()
        output = process.communicate(timeout=30)[0].decode(errors="replace")
    assert process.returncode == 0, output
    assert "rejected notification" in output


@pytest.mark.integration
def test_watch_command_stops_cleanly_on_sigterm(stack: Stack, tmp_path: Path) -> None:
    import signal

    store = CosStore(stack.settings())
    store.upload_file(write_h5(tmp_path / "w.h5", clips=2), stack.input_bucket, "cli-watch/w.h5")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "cli",
            "watch",
            f"cos://{stack.input_bucket}/cli-watch/",
            "--interval",
            "0.5",
        ],
        env={**os.environ, **stack.env},
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    from audioset_batch.jobs.job_store import UnknownJobError
    from audioset_batch.storage.object_store import ObjectURL
    from producers.watcher import watch_job_id

    jobs = open_job_store(stack.settings().effective_state_url)
    job = watch_job_id(ObjectURL.parse(f"cos://{stack.input_bucket}/cli-watch/"))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if jobs.status(job).total:
                break
        except UnknownJobError:
            pass
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    output = process.communicate(timeout=20)[0].decode(errors="replace")
    assert process.returncode == 0, output
    assert "enqueued 1 new object" in output
