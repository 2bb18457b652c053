"""``python -m benchmarks.soak [--files 2000] [--workers 2] [--restarts 1]``: the reliability soak; prints JSON.

A job of many small files through real parts (a private redis-server with AOF on, moto's S3 server over HTTP,
a Celery worker with N processes and the shipped model at the default precision). A quarter of the way in, one
worker child is killed with SIGKILL; half way in, Redis is stopped and started again 4 s later (``--restarts N``:
N times, the later ones down 0.2-4 s at random); all of it while files are in flight. At the end every file must
be scored exactly once or errored, none pending, and the report says how long after the last restart the last file
was done; when it fails, the worker log's tail goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def soak(
    files: int, workers: int, clips: int, timeout: float, tmp: Path, restarts: int = 1, seed: int = 0
) -> dict[str, Any]:
    from moto.server import ThreadedMotoServer

    from audioset_batch.jobs.factory import open_job_store
    from audioset_batch.settings import load_settings
    from audioset_batch.storage.cos_store import CosStore
    from benchmarks.files import write_file
    from producers.enqueue import enqueue
    from tests.conftest import Stack, free_port, start_redis, wait_for_port
    from tests.faults.conftest import child_pids, tally
    from worker.app import make_app
    from worker.config import worker_command

    redis = start_redis(tmp, "--appendonly", "yes", "--appendfsync", "always")
    s3_port = free_port()
    s3 = ThreadedMotoServer(ip_address="127.0.0.1", port=s3_port, verbose=False)
    s3.start()
    wait_for_port(s3_port)
    run = uuid.uuid4().hex[:8]
    env = {
        "AUDIOSET_BROKER_URL": redis.db_url(0),
        "AUDIOSET_STATE_URL": redis.db_url(1),
        "AUDIOSET_COS_ENDPOINT": f"http://127.0.0.1:{s3_port}",
        "AUDIOSET_COS_ACCESS_KEY_ID": "soak",
        "AUDIOSET_COS_SECRET_ACCESS_KEY": "soak-secret",
        "AUDIOSET_INPUT_BUCKET": f"input-{run}",
        "AUDIOSET_RESULTS_BUCKET": f"results-{run}",
        "AUDIOSET_QUEUE": f"soak-{run}",
        "AUDIOSET_LOG_LEVEL": "WARNING",
    }
    os.environ.update(env)
    settings = load_settings()
    input_bucket = env["AUDIOSET_INPUT_BUCKET"]
    store = CosStore(settings)
    store.client.create_bucket(Bucket=input_bucket)
    store.client.create_bucket(Bucket=settings.results_bucket)
    source = write_file(tmp / "soak.h5", clips)
    body = source.read_bytes()
    for i in range(files):
        store.put_bytes(body, input_bucket, f"soak/{i:05d}.h5")
    log = (tmp / "worker.log").open("wb")
    worker = subprocess.Popen(
        worker_command(workers, settings.queue, "WARNING", "--without-gossip", "--without-mingle"),
        env={**os.environ, **env},
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    killed: float | None = None
    # the first restart half way in, 4 s down; more (--restarts) spread evenly after it, down 0.2-4 s at random
    marks = [files // 2 + k * (files - files // 2) // (restarts + 1) for k in range(restarts)]
    pauses = [4.0] + [random.Random(seed + k).uniform(0.2, 4.0) for k in range(1, restarts)]
    restarted: list[float] = []
    try:
        jobs = open_job_store(settings.effective_state_url)
        while len(child_pids(worker.pid)) < workers:
            time.sleep(0.5)
        started = time.monotonic()
        job = enqueue(make_app(settings), jobs, [f"cos://{input_bucket}/soak/"], settings).job
        deadline = started + timeout
        finished_at = None
        while time.monotonic() < deadline:
            try:
                status = jobs.status(job)
            except Exception:  # Redis is restarting
                time.sleep(0.5)
                continue
            if status.finished:
                finished_at = time.monotonic() - started
                break
            # only while files are in flight: a fault after the last file tests nothing
            if killed is None and status.done >= files // 4:
                os.kill(child_pids(worker.pid)[0], signal.SIGKILL)
                killed = time.monotonic() - started
            elif len(restarted) < restarts and status.done >= marks[len(restarted)]:
                redis.restart(pause=pauses[len(restarted)])
                restarted.append(time.monotonic() - started)
            time.sleep(0.1)
        status = jobs.status(job)
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(120)
        except subprocess.TimeoutExpired:
            worker.kill()
        log.close()
    inputs = {f"soak/{i:05d}.h5": clips for i in range(files)}
    row = tally(Stack(env=env, input_bucket=input_bucket, results_bucket=settings.results_bucket), "soak", inputs)
    counts = {"scored": row.scored, "errored": row.errored, "lost": row.lost, "duplicated": row.duplicated}
    s3.stop()
    redis.stop()
    faulted = killed is not None and len(restarted) == restarts  # all while the job ran
    ok = faulted and counts["lost"] == 0 and counts["duplicated"] == 0 and status.pending == 0
    if not ok:  # what the worker said is the only trace of why: the temporary folder goes with the run
        lines = (tmp / "worker.log").read_text(errors="replace").splitlines()
        print("\n".join(["worker log, last 80 lines:", *lines[-80:]]), file=sys.stderr)
    return {
        "files": files,
        "worker_processes": workers,
        "clips_per_file": clips,
        "precision": settings.precision,
        "job": {"scored": status.scored, "skipped": status.skipped, "failed": status.failed, "pending": status.pending},
        "results": counts,
        "child_killed_at_seconds": None if killed is None else round(killed, 1),
        "redis_restarted_at_seconds": [round(at, 1) for at in restarted],
        "finished_at_seconds": None if finished_at is None else round(finished_at, 1),
        "last_file_after_restart_seconds": None
        if finished_at is None or not restarted
        else round(finished_at - restarted[-1], 1),
        "ok": ok,
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__)
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--clips", type=int, default=3, help="clips per file")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds to wait for the job")
    parser.add_argument("--restarts", type=int, default=1, help="Redis restarts, from half way in")
    parser.add_argument("--seed", type=int, default=0, help="seeds the down times of restarts after the first")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request log: one line per request
    with tempfile.TemporaryDirectory() as tmp:
        report = soak(args.files, args.workers, args.clips, args.timeout, Path(tmp), args.restarts, args.seed)
    print(json.dumps(report, indent=2))
    sys.exit(0 if report["ok"] else 1)


if __name__ == "__main__":
    main()
