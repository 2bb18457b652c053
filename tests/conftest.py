"""Fixtures that start real parts: a private redis-server, moto's S3 server over HTTP, Celery workers."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.faults.proxy import FaultProxy
from tests.helpers import build_artifact
from worker.config import worker_command

ROOT = Path(__file__).resolve().parent.parent


def pytest_configure(config: pytest.Config) -> None:
    """The suite's environment, set when pytest starts, not on import: the benchmarks import helpers from here
    and must run at the default precision (the soak ran at float32 while it said it did not)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # Tests in this process compare exact float32 scores and model tags. The queued workers of `stack` serve the
    # compiled form at `auto` instead (see the fixture); tests of the default precision unset this.
    os.environ.setdefault("AUDIOSET_PRECISION", "float32")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on port {port} after {timeout}s")


@dataclass
class RedisServer:
    url: str
    port: int
    process: subprocess.Popen[bytes] | None = None
    args: list[str] = field(default_factory=list)

    def db_url(self, db: int) -> str:
        return self.url.rsplit("/", 1)[0] + f"/{db}"

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)

    def restart(self, pause: float = 0.0) -> None:
        """Stop and start the private server on the same port (fault tests)."""
        assert self.process is not None, "cannot restart an external Redis"
        self.stop()
        time.sleep(pause)
        self.start()

    def start(self) -> None:
        """Start the private server again after :meth:`stop`, on the same port and folder (its AOF, if on)."""
        self.process = subprocess.Popen(self.args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for_port(self.port)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    external = os.environ.get("AUDIOSET_TEST_REDIS_URL")
    if external:
        yield RedisServer(url=external, port=int(external.rsplit(":", 1)[1].split("/")[0]))
        return
    server = start_redis(tmp_path_factory.mktemp("redis"))
    yield server
    reap_stopped_workers()
    server.stop()


def start_redis(workdir: Path, *extra: str, scheme: str = "redis", tls_port: bool = False) -> RedisServer:
    """A private redis-server on a free port (no persistence unless ``extra`` asks for it)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail("redis-server is not installed (apt-get install redis-server) and AUDIOSET_TEST_REDIS_URL is unset")
    port = free_port()
    ports = ["--port", "0", "--tls-port", str(port)] if tls_port else ["--port", str(port)]
    args = [binary, *ports, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir), *extra]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_port(port)
    return RedisServer(url=f"{scheme}://127.0.0.1:{port}/0", port=port, process=process, args=args)


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """moto's S3 server on a free port, in-process; reached over HTTP like any S3 endpoint."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    wait_for_port(port)
    yield f"http://127.0.0.1:{port}"
    reap_stopped_workers()
    server.stop()


@pytest.fixture
def proxy(s3_endpoint: str) -> Iterator[FaultProxy]:
    """A fault-injecting HTTP proxy in front of :func:`s3_endpoint` (point ``AUDIOSET_COS_ENDPOINT`` at its url)."""
    p = FaultProxy(s3_endpoint)
    yield p
    p.close()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_artifact(tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture(scope="session")
def tiny_compiled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tiny`` with its compiled forms (ungated): a worker child serving it at ``auto`` is ready in well under a
    second, where loading TensorFlow for float32 takes about four."""
    from model.form_builder import add_forms

    model = build_artifact(tmp_path_factory.mktemp("compiled") / "tiny")
    add_forms(model)
    return model


@pytest.fixture
def redis_db(redis_server: RedisServer) -> Iterator[str]:
    """A flushed Redis database for one test."""
    import redis

    url = redis_server.db_url(1)
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()


def cos_env(endpoint: str) -> dict[str, str]:
    return {
        "AUDIOSET_COS_ENDPOINT": endpoint,
        "AUDIOSET_COS_ACCESS_KEY_ID": "test-access-key",
        "AUDIOSET_COS_SECRET_ACCESS_KEY": "test-secret-key-do-not-log",
    }


@dataclass
class Stack:
    """Settings-as-environment for one isolated pipeline: its own queue, Redis db and buckets."""

    env: dict[str, str]
    input_bucket: str
    results_bucket: str

    def settings(self, **overrides: object):  # type: ignore[no-untyped-def]
        from audioset_batch.settings import load_settings

        old = dict(os.environ)
        os.environ.update(self.env)
        try:
            return load_settings(**overrides)
        finally:
            os.environ.clear()
            os.environ.update(old)


@pytest.fixture
def stack(redis_server: RedisServer, s3_endpoint: str, tiny_compiled: Path) -> Stack:
    """Its workers serve the compiled form at ``auto``, as a deployment's default does: each child is ready in a
    fraction of a second instead of loading TensorFlow. A test that compares exact float32 scores says so."""
    return new_stack(redis_server, s3_endpoint, tiny_compiled, AUDIOSET_PRECISION="auto")


def new_stack(redis_server: RedisServer, s3_endpoint: str, model: Path, **env_overrides: str) -> Stack:
    """A pipeline of its own (queue, buckets) serving ``model``, its buckets made."""
    suffix = uuid.uuid4().hex[:8]
    env = {
        **cos_env(s3_endpoint),
        "AUDIOSET_BROKER_URL": redis_server.db_url(2),
        "AUDIOSET_STATE_URL": redis_server.db_url(3),
        "AUDIOSET_QUEUE": f"test-{suffix}",
        "AUDIOSET_MODEL_PATH": str(model),
        "AUDIOSET_RESULTS_BUCKET": f"results-{suffix}",
        "AUDIOSET_WORKER_CONCURRENCY": "1",
        "AUDIOSET_TF_THREADS": "1",
        "AUDIOSET_RETRY_BACKOFF": "0.2",
        "AUDIOSET_RETRY_BACKOFF_MAX": "1",
        "AUDIOSET_LOG_LEVEL": "INFO",
        **env_overrides,
    }
    stack = Stack(env=env, input_bucket=f"input-{suffix}", results_bucket=f"results-{suffix}")
    from audioset_batch.storage.cos_store import CosStore

    client = CosStore(stack.settings()).client
    client.create_bucket(Bucket=stack.input_bucket)
    client.create_bucket(Bucket=stack.results_bucket)
    return stack


class WorkerProcess:
    def __init__(
        self,
        env: dict[str, str],
        log_path: Path,
        concurrency: int = 1,
        queues: str | None = None,
        via_cli: bool = False,
    ) -> None:
        """``celery -A worker``, or with ``via_cli`` the user's ``audioset worker``; stdout and stderr in one log."""
        self.log_path = log_path
        self.env = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
        flags = ["-n", f"w{uuid.uuid4().hex[:6]}@%h", "--without-gossip", "--without-mingle", "--without-heartbeat"]
        queue = queues or env["AUDIOSET_QUEUE"]
        if via_cli:
            command = [sys.executable, "-m", "cli", "worker", "-c", str(concurrency), "-Q", queue]
            command += flags
        else:
            command = worker_command(concurrency, queue, "INFO", *flags)
        self.log = log_path.open("ab")
        self.process = subprocess.Popen(command, env=self.env, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT)
        self.wait_ready()

    def text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for(self, text: str, count: int = 1, timeout: float = 60) -> None:
        """Until the log says ``text`` ``count`` times; fails with the log's tail after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while self.text().count(text) < count:
            assert time.monotonic() < deadline, f"{count} x {text!r} not in the worker log:\n{self.text()[-3000:]}"
            time.sleep(0.2)

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.text()
            # a child's model loaded (not a line of the audioset.model logger, which comes before it)
            if " ready." in text and " loaded from " in text:
                return
            if self.process.poll() is not None:
                raise RuntimeError(f"worker exited early:\n{self.text()[-4000:]}")
            time.sleep(0.2)
        raise TimeoutError(f"worker not ready after {timeout}s:\n{self.text()[-4000:]}")

    def stop(self, wait: bool = True) -> None:
        """SIGTERM, Celery's warm shutdown. Celery takes 1.5-2.5 s to join even an idle pool (its supervisor
        sleeps in 0.8 s steps): ``wait=False``, for a test that is done with the worker, leaves that wait to
        :func:`reap_stopped_workers` instead of the next test."""
        if self.process.poll() is None:
            self.process.terminate()
            if not wait:
                STOPPING.append(self)
                return
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


#: Workers sent SIGTERM and not yet waited for; reaped before the servers they talk to stop.
STOPPING: list[WorkerProcess] = []


def reap_stopped_workers() -> None:
    while STOPPING:
        STOPPING.pop().stop()


@pytest.fixture
def worker(stack: Stack, tmp_path: Path) -> Iterator[WorkerProcess]:
    process = WorkerProcess(stack.env, tmp_path / "worker.log")
    yield process
    process.stop(wait=False)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("AUDIOSET_DATA_DIR"):
        return
    skip = pytest.mark.skip(reason="opt-in: set AUDIOSET_DATA_DIR to the AudioSet release (.ci/run does)")
    for item in items:
        if "realdata" in item.keywords:
            item.add_marker(skip)
