"""``python -m benchmarks.dashboard [--files 10000]``: how fast the dashboard's pages load for a big job; JSON.

A job of N files in each job store kind (a private redis-server, and SQLite), ended the way workers end them (one
in fifty failed with a reason), served by the real dashboard (uvicorn on a loopback port), and each page fetched
over HTTP a few times with a logged-in session. Reports the median milliseconds per page (the docs' budget is
1 s for the job page of a 10,000-file job).
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any


def fill(jobs: Any, files: int) -> str:
    from audioset_batch.jobs.job_store import ItemEnd

    job = str(jobs.create_job(name="dashboard-benchmark"))
    items = [f"cos://input/bench/{i:06d}.h5" for i in range(files)]
    jobs.add_items(job, items)
    for i, item in enumerate(items):
        if i % 50 == 49:
            jobs.mark(job, item, "failed", ItemEnd(error="NotHDF5Error", message=f"{item}: not an HDF5 file"))
        elif i % 10:
            jobs.mark(job, item, "scored", ItemEnd(clips=100, seconds=0.5, url=item))
    return job  # every tenth file stays pending: the job is running


def time_pages(jobs: Any, job: str, root: Path, rounds: int) -> dict[str, float]:
    from audioset_batch.settings import load_settings
    from audioset_batch.storage.local_store import LocalStore
    from dashboard.app import build_app
    from dashboard.reading import Sources
    from dashboard.security import COOKIE, Keys
    from dashboard.server import DashboardServer
    from tests.helpers import make_labels

    settings = load_settings(local_root=root, results_bucket="results")
    sources = Sources(settings=settings, jobs=jobs, results=LocalStore(root), classes=make_labels(527), model="b@1")
    server = DashboardServer(build_app(sources, "benchmark-token", "127.0.0.1", lambda: None), "127.0.0.1", 0)  # type: ignore[arg-type,return-value]
    server.start()
    pages = {
        "jobs_list": "/",
        "job_page": f"/jobs/{job}",
        "job_page_failed_only": f"/jobs/{job}?status=failed",
        "job_live_summary": f"/fragments/jobs/{job}?part=summary",
        "job_live_files": f"/fragments/jobs/{job}?part=files",
        "api_job": f"/api/jobs/{job}",
    }
    cookie = f"{COOKIE}={Keys('benchmark-token').session}"
    result = {}
    try:
        for name, path in pages.items():
            timings = []
            for _ in range(rounds):
                connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
                started = time.perf_counter()
                connection.request("GET", path, headers={"Cookie": cookie, "Host": "127.0.0.1"})
                response = connection.getresponse()
                response.read()
                timings.append((time.perf_counter() - started) * 1000)
                connection.close()
                assert response.status == 200, (path, response.status)
            result[f"{name}_ms"] = round(statistics.median(timings), 1)
    finally:
        server.stop()
    return result


def measure(files: int, rounds: int, tmp: Path) -> dict[str, Any]:
    from audioset_batch.jobs.redis_job_store import RedisJobStore
    from audioset_batch.jobs.sqlite_job_store import SqliteJobStore
    from tests.conftest import start_redis

    report: dict[str, Any] = {"files": files, "rounds": rounds}
    redis = start_redis(tmp)
    try:
        jobs = RedisJobStore(redis.db_url(0))
        report["redis"] = time_pages(jobs, fill(jobs, files), tmp / "buckets", rounds)
    finally:
        redis.stop()
    sqlite = SqliteJobStore(tmp / "state.db")
    report["sqlite"] = time_pages(sqlite, fill(sqlite, files), tmp / "buckets", rounds)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.dashboard", description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dashboard-bench-") as tmp:
        print(json.dumps(measure(args.files, args.rounds, Path(tmp)), indent=2))


if __name__ == "__main__":
    main()
