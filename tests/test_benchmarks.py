"""The benchmark command runs and reports every figure the performance docs quote (no timing asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_benchmark_command_prints_every_figure_as_json() -> None:
    args = ["--clips", "3000", "--forward-clips", "3000", "--rss-clips", "2000", "--skip-queue"]
    args += ["--precision", "int8", "--rss-precision", "int8"]
    run = subprocess.run(
        [sys.executable, "-m", "benchmarks", *args], cwd=ROOT, capture_output=True, text=True, timeout=500
    )
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads(run.stdout)
    assert report["forward_only"]["ratio"] == 1.0 and report["forward_only"]["clips_per_second"] > 0
    for name in ("score_top5", "score_full_scores", "seed_way", "seed_way_full_scores"):
        assert report[name]["clips_per_second"] > 0 and report[name]["ratio"] > 0, name
    int8 = report["int8"]
    assert "skipped" in int8 or all(int8[k]["speedup_vs_float32"] > 0 for k in ("forward_only", "score_top5"))
    rss = report["rss_2000_clips"]
    assert rss["precision"] == "int8" and rss["peak_rss_mb"] >= rss["model_loaded_rss_mb"] > 0
