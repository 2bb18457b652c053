"""``python -m benchmarks.manifest [--files 10000]``: what a job's manifest costs; prints JSON.

A job of N files in a private redis-server, each ended the way the worker ends it (scored with clips and seconds,
one in fifty failed with a reason), then the manifest written as the writer writes it (read from the job store,
encoded, put into a folder bucket), a few times over. Reports the milliseconds of one write, per file (the docs'
budget is 10 ms per file amortised, and the writer writes a changed job once per AUDIOSET_MANIFEST_INTERVAL, not
once per file), and the manifest's size.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any


def measure(files: int, rounds: int, tmp: Path) -> dict[str, Any]:
    import orjson

    from audioset_batch.jobs.job_store import ItemEnd
    from audioset_batch.jobs.redis_job_store import RedisJobStore
    from audioset_batch.results.job_manifest import job_manifest, manifest_key
    from audioset_batch.storage.local_store import LocalStore
    from tests.conftest import start_redis

    redis = start_redis(tmp)
    try:
        jobs = RedisJobStore(redis.db_url(0))
        job = jobs.create_job(name="manifest-benchmark")
        items = [f"cos://input/bench/{i:06d}.h5" for i in range(files)]
        jobs.add_items(job, items)
        started = time.perf_counter()
        for i, item in enumerate(items):
            if i % 50 == 49:
                jobs.mark(job, item, "failed", ItemEnd(error="NotHDF5Error", message=f"{item}: not an HDF5 file"))
            else:
                jobs.mark(job, item, "scored", ItemEnd(clips=100, seconds=0.5, url=item))
        mark_ms = (time.perf_counter() - started) * 1000 / files
        store = LocalStore(tmp / "buckets")
        timings, size = [], 0
        for _ in range(rounds):
            t0 = time.perf_counter()
            data = orjson.dumps(job_manifest(jobs, job, "bench@1", "predictions/"))
            store.put_bytes(data, "results", manifest_key("predictions/", job), content_type="application/json")
            timings.append((time.perf_counter() - t0) * 1000)
            size = len(data)
        written = json.loads((tmp / "buckets" / "results" / manifest_key("predictions/", job)).read_bytes())
        assert len(written["files"]) == files and written["job"]["state"] == "finished"
    finally:
        redis.stop()
    median = statistics.median(timings)
    return {
        "files": files,
        "manifest_write_ms": round(median, 1),
        "manifest_write_ms_per_file": round(median / files, 4),
        "manifest_bytes": size,
        "job_store_mark_ms_per_file": round(mark_ms, 3),
        "rounds": rounds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.manifest", description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="manifest-bench-") as tmp:
        print(json.dumps(measure(args.files, args.rounds, Path(tmp)), indent=2))


if __name__ == "__main__":
    main()
