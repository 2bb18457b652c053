"""``python -m benchmarks.cold_start [--model DIR] [--runs N]``: what a small file and a scale-out wait for.

Measures, in one run on one machine, and prints JSON:
- ``audioset score`` of a 1-clip file, process start to exit (median of ``--runs``), at ``auto`` and ``float32``,
  and at ``auto`` with a copy of the artifact stripped of its compiled form (how every release before compiled
  forms started: TensorFlow imported, int8 converted at load);
- a worker child's time to ready after fork (its model load, from the worker's own log line), and the worker's
  start to its first child ready, with and without the compiled form;
- forward-only clips/s of each runtime that serves here (LiteRT int8 from the form, TensorFlow float32, and
  the bfloat16 form in OpenVINO: in bfloat16 where the CPU has it, else in float32), with the CPU's features named.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.files import ROOT, write_file
from model.artifact import DEFAULT_ARTIFACT, MANIFEST_NAME

CPU_FEATURES = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def cpu_features() -> list[str]:
    """The instruction sets that decide which precision is fastest here (from /proc/cpuinfo)."""
    from model.inference import _cpu_flags

    flags = _cpu_flags()
    return [feature for feature in CPU_FEATURES if feature in flags]


def without_forms(model: Path, folder: Path) -> Path:
    """A copy of the artifact as written before compiled forms existed."""
    copy = Path(shutil.copytree(model, folder, ignore=shutil.ignore_patterns("*.tflite")))
    manifest = json.loads((copy / MANIFEST_NAME).read_text())
    manifest.pop("compiled", None)
    (copy / MANIFEST_NAME).write_text(json.dumps(manifest))
    return copy


def score_one_clip(model: Path, precision: str, data: Path, runs: int) -> dict[str, Any]:
    """Wall seconds of `audioset score` on a 1-clip file, as a user runs it."""
    env = {**os.environ, "AUDIOSET_MODEL_PATH": str(model), "AUDIOSET_PRECISION": precision}
    command = [str(Path(sys.executable).with_name("audioset")), "score", str(data), "-o", str(data) + ".jsonl"]
    seconds = []
    for _ in range(runs):
        start = time.perf_counter()
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        seconds.append(time.perf_counter() - start)
        if done.returncode != 0:
            raise RuntimeError(f"audioset score failed: {done.stderr[-2000:]}")
    tag = json.loads(Path(str(data) + ".jsonl").read_text().splitlines()[0])["model"]
    return {
        "seconds_median": round(statistics.median(seconds), 3),
        "seconds": [round(s, 3) for s in seconds],
        "model": tag,
    }


def worker_ready(model: Path, precision: str, tmp: Path) -> dict[str, Any]:
    """Start a one-process worker against a private redis-server; read its child's load time from its log."""
    from tests.conftest import free_port, wait_for_port
    from worker.config import worker_command

    port = free_port()
    redis = subprocess.Popen(
        [shutil.which("redis-server") or "redis-server", "--port", str(port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    wait_for_port(port)
    log_path = tmp / f"worker-{precision}-{model.name}.log"
    env = {
        **os.environ,
        "AUDIOSET_BROKER_URL": f"redis://127.0.0.1:{port}/0",
        "AUDIOSET_MODEL_PATH": str(model),
        "AUDIOSET_PRECISION": precision,
        "AUDIOSET_QUEUE": "cold",
        "AUDIOSET_METRICS_PORT": "0",
    }
    start = time.perf_counter()
    with log_path.open("wb") as log:
        worker = subprocess.Popen(
            worker_command(1, "cold", "INFO", "--without-gossip", "--without-mingle", "--without-heartbeat"),
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        loaded = None
        while time.perf_counter() - start < 300 and worker.poll() is None:
            loaded = re.search(r"loaded from \S+ \((.*)\) in ([0-9.]+) s", log_path.read_text(errors="replace"))
            if loaded:
                break
            time.sleep(0.02)
        if loaded is None:
            raise RuntimeError(f"worker did not load its model: {log_path.read_text(errors='replace')[-2000:]}")
        return {
            "child_load_seconds": float(loaded.group(2)),
            "start_to_child_ready_seconds": round(time.perf_counter() - start, 2),
            "served_by": loaded.group(1),
        }
    finally:
        worker.terminate()
        worker.wait(60)
        redis.terminate()
        redis.wait(10)


def forward_rates(model: Path, clips: int, rounds: int = 3) -> dict[str, Any]:
    """Forward-only clips/s per runtime on in-memory arrays, in this one process: the runtimes take turns for
    ``rounds`` rounds and each keeps its best, so a burst of other work on the machine hits them alike."""
    from model.artifact import read_manifest
    from model.inference import Predictor, cpu_supports_bfloat16
    from model.served_forms import compiled_forward, form_runs_here

    x = np.random.default_rng(1).integers(0, 256, size=(clips, 10, 128), dtype=np.uint8)
    precisions = ["int8", "float32"] + (["bfloat16"] if cpu_supports_bfloat16() else [])
    predictors = {precision: Predictor.from_artifact(model, precision=precision) for precision in precisions}
    manifest = read_manifest(model)
    if "bfloat16" not in predictors and form_runs_here("bfloat16", manifest.compiled):
        # No bfloat16 arithmetic here: OpenVINO runs the bfloat16 form in float32, which is worth knowing too.
        forward, _ = compiled_forward(model, manifest, "bfloat16", None)
        precisions.append("bfloat16_form_in_float32")
        predictors["bfloat16_form_in_float32"] = Predictor(
            forward, manifest, frames=manifest.frames, precision="bfloat16", runtime="OpenVINO (float32 here)"
        )
    best = dict.fromkeys(precisions, 0.0)
    for predictor in predictors.values():
        predictor.predict(x[:2048])  # warm-up: trace and allocate
    for _ in range(rounds):
        for precision, predictor in predictors.items():
            start = time.perf_counter()
            predictor.predict(x)
            best[precision] = max(best[precision], clips / (time.perf_counter() - start))
    return {
        precision: {
            "runtime": predictors[precision].runtime,
            "clips_per_second": round(best[precision], 1),
            "speedup_vs_float32": round(best[precision] / best["float32"], 2),
        }
        for precision in precisions
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.cold_start",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", type=Path, default=DEFAULT_ARTIFACT, help="artifact with a compiled form")
    parser.add_argument("--runs", type=int, default=5, help="runs of each `audioset score` (the median is reported)")
    parser.add_argument(
        "--forward-clips", type=int, default=20_000, help="clips per forward-only measurement (0: skip)"
    )
    parser.add_argument("--skip-worker", action="store_true", help="leave out the worker (it needs redis-server)")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    model = args.model.resolve()
    report: dict[str, Any] = {"model": str(model), "machine": {"cpus": os.cpu_count(), "cpu_features": cpu_features()}}
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        old = without_forms(model, tmp / "without-forms")
        one = write_file(tmp / "one.h5", 1)
        report["score_one_clip"] = {
            "auto": score_one_clip(model, "auto", one, args.runs),
            "float32": score_one_clip(model, "float32", one, args.runs),
            "auto_without_compiled_form": score_one_clip(old, "auto", one, args.runs),
        }
        if not args.skip_worker:
            report["worker"] = {
                "auto": worker_ready(model, "auto", tmp),
                "auto_without_compiled_form": worker_ready(old, "auto", tmp),
            }
        if args.forward_clips:
            report["forward_only"] = forward_rates(model, args.forward_clips)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
