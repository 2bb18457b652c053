"""The HTTP listener as an attacker meets it: stalled connections, no token, foreign buckets, hostile keys.

Each case runs the real ``audioset listen --http`` process against real Redis and the HTTP S3
endpoint, and records its outcome in the security report.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

import pytest

from audioset_batch.jobs.factory import open_job_store
from audioset_batch.storage.cos_store import CosStore
from producers.enqueue import send
from tests.conftest import ROOT, Stack, WorkerProcess, free_port, wait_for_port
from tests.faults.conftest import check
from tests.helpers import wait_job, write_h5
from worker.app import make_app

pytestmark = pytest.mark.integration
TOKEN = "s3cr3t-token-for-tests"


@contextmanager
def listener(
    stack: Stack, *args: str, host: str = "127.0.0.1", **env: str
) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "cli", "listen", "--http", f"{host}:{port}", *args],
        env={**os.environ, **stack.env, **env},
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_for_port(port, 60)
        yield port, process
    finally:
        process.terminate()
        process.communicate(timeout=30)


def request(
    port: int, path: str = "/", body: bytes | None = None, token: str | None = None
) -> tuple[int, dict[str, object]]:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=body, method="POST" if body else "GET", headers=headers
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def s3_event(bucket: str, key: str, etag: str = "e1") -> bytes:
    record = {
        "eventName": "s3:ObjectCreated:Put",
        "s3": {"bucket": {"name": bucket}, "object": {"key": key, "eTag": etag}},
    }
    return json.dumps({"Records": [record]}).encode()


def threads_and_rss_mb(pid: int) -> tuple[int, float]:
    status = Path(f"/proc/{pid}/status").read_text()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return int(fields["Threads"]), int(fields["VmRSS"].split()[0]) / 1024


def test_stalled_connections_hold_no_threads_and_healthz_answers(stack: Stack) -> None:
    with listener(stack, AUDIOSET_LISTEN_TIMEOUT="3", AUDIOSET_LISTEN_MAX_CONNECTIONS="200") as (port, process):
        assert request(port, "/healthz")[0] == 200
        threads_before, rss_before = threads_and_rss_mb(process.pid)
        stalled = []
        for _ in range(300):  # headers promising a body that never comes
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n")
            stalled.append(sock)
        time.sleep(0.5)
        threads, rss = threads_and_rss_mb(process.pid)
        healthz = request(port, "/healthz")[0]
        # past the request timeout every stalled connection is answered 408 (or was dropped, oldest first, at the cap)
        time.sleep(3.5)
        endings = []
        for sock in stalled:
            sock.settimeout(5)
            try:
                endings.append(sock.recv(100)[:12])
            except OSError:
                endings.append(b"reset")
            sock.close()
        code_after = request(port, "/healthz")[0]
    grew = threads - threads_before
    assert check("300 stalled HTTP connections: extra threads", "<= 4", "<= 4" if grew <= 4 else grew).ok
    assert check("300 stalled HTTP connections: memory", "< +50 MB", "< +50 MB" if rss - rss_before < 50 else rss).ok
    assert check("/healthz while 300 connections stall", "200", healthz).ok
    assert endings.count(b"HTTP/1.1 408") >= 100 and set(endings) <= {b"HTTP/1.1 408", b"", b"reset"}
    assert code_after == 200


def test_public_address_without_token_is_refused_in_one_line(stack: Stack) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "cli", "listen", "--http", f"0.0.0.0:{free_port()}"],
        env={**os.environ, **stack.env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert "Traceback" not in result.stderr
    assert check("listen on 0.0.0.0 without AUDIOSET_LISTEN_TOKEN", "exit 2", f"exit {result.returncode}").ok
    assert "AUDIOSET_LISTEN_TOKEN" in result.stderr.strip().splitlines()[-1]


def test_token_is_required_and_checked(stack: Stack, worker: WorkerProcess, tmp_path: Path) -> None:
    store = CosStore(stack.settings())
    store.upload_file(write_h5(tmp_path / "a.h5", clips=2), stack.input_bucket, "auth/a.h5")
    event = s3_event(stack.input_bucket, "auth/a.h5")
    # its own --prefix, so its own listener job: the default listener's job is shared by other tests
    with listener(stack, "--prefix", "auth/", host="0.0.0.0", AUDIOSET_LISTEN_TOKEN=TOKEN) as (port, _):
        assert request(port, "/healthz")[0] == 200  # probes need no token
        assert check("notification without a token", "401", request(port, body=event)[0]).ok
        assert check("notification with a wrong token", "401", request(port, body=event, token="guess")[0]).ok
        assert check("/stats without a token", "401", request(port, "/stats")[0]).ok
        code, body = request(port, body=event, token=TOKEN)
        assert check("notification with the token", "202", code).ok and body["enqueued"] == 1


@pytest.mark.parametrize(
    "case, bucket, key",
    [
        ("key with '..'", None, "a/../../etc/passwd.h5"),
        ("key with %00", None, quote("a\x00b.h5")),
        ("absolute key", None, "/etc/x.h5"),
        ("bucket named a/b", "a/b", "x.h5"),
        ("bucket outside AUDIOSET_ALLOWED_SOURCES", "other-tenant", "x.h5"),
        ("prefix outside AUDIOSET_ALLOWED_SOURCES", None, "private/x.h5"),
    ],
)
def test_keys_the_worker_would_refuse_get_422(stack: Stack, case: str, bucket: str | None, key: str) -> None:
    with listener(stack, AUDIOSET_ALLOWED_SOURCES=f"{stack.input_bucket}/incoming/") as (port, _):
        code, body = request(port, body=s3_event(bucket or stack.input_bucket, key))
    assert check(f"notification: {case}", "422", code).ok, body


def test_deeply_nested_json_is_a_400(stack: Stack) -> None:
    with listener(stack) as (port, _):
        for depth in (990, 1024, 5000):
            code, _ = request(port, body=b"[" * depth + b"]" * depth)
            assert check(f"JSON nested {depth} deep", "400", code).ok
        assert request(port, "/healthz")[0] == 200


def test_tasks_outside_the_allow_list_are_refused_by_the_worker(stack: Stack, tmp_path: Path) -> None:
    """A task pushed straight onto the queue (not through a producer) still cannot read outside the allow-list,
    and writes no error record that could replace another bucket's results."""
    store = CosStore(stack.settings())
    store.client.create_bucket(Bucket=f"{stack.input_bucket}-other")
    store.upload_file(write_h5(tmp_path / "v.h5", clips=2), f"{stack.input_bucket}-other", "victim.h5")
    store.upload_file(write_h5(tmp_path / "v.h5", clips=2), stack.input_bucket, "victim.h5")
    env = {**stack.env, "AUDIOSET_ALLOWED_SOURCES": stack.input_bucket}
    worker = WorkerProcess(env, tmp_path / "w.log")
    try:
        settings = stack.settings()  # the producer side has no allow-list: an attacker's own producer
        jobs = open_job_store(settings.effective_state_url)
        job = jobs.create_job(name="direct")
        app = make_app(settings)
        from audioset_batch.storage.object_store import ObjectURL

        send(app, jobs, job, [ObjectURL.parse(f"cos://{stack.input_bucket}-other/victim.h5")], settings)
        send(app, jobs, job, [ObjectURL.parse(f"cos://{stack.input_bucket}/victim.h5")], settings)
        status = wait_job(jobs, job, 120)
    finally:
        worker.stop()
    assert (status.failed, status.scored) == (1, 1)
    assert store.get_bytes(stack.results_bucket, f"predictions/{stack.input_bucket}/victim.h5.jsonl") is not None
    assert not list(store.list(stack.results_bucket, f"predictions/{stack.input_bucket}-other/"))
    assert check("task for a bucket outside the allow-list", "failed, no record", "failed, no record").ok
    assert "AUDIOSET_ALLOWED_SOURCES" in worker.text()
