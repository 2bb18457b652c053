"""Peak memory, measured from each process's own VmHWM: `audioset score`, a loaded model, a worker child."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.files import ROOT


def peak_rss_mb(model: Path, path: Path, precision: str = "float32") -> dict[str, Any]:
    """Peak RSS of `audioset score` in its own process, and of a process that only loads the model.

    Read from VmHWM, the high-water mark of the process's own memory map. (``ru_maxrss``
    would not do: Linux carries the parent's peak into a child across fork and exec, so
    every child of a big benchmark process would report the benchmark's own peak.)
    """
    hwm = "print(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM:')))"
    code = (
        "import sys,runpy; sys.argv=['audioset','score',%r,'-o',%r]\n"
        "try:\n    runpy.run_module('cli', run_name='__main__')\n"
        "except SystemExit: pass\n" + hwm
    )
    load_only = (
        "import numpy as np\nfrom model.inference import Predictor\n"
        f"p=Predictor.from_artifact({str(model)!r}, precision={precision!r})\n"
        "p.predict(np.zeros((1024,10,128),np.uint8))\n" + hwm
    )
    env = {
        **os.environ,
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "AUDIOSET_PRECISION": precision,
        "AUDIOSET_MODEL_PATH": str(model),
    }
    with tempfile.TemporaryDirectory() as tmp:
        run = subprocess.run(
            [sys.executable, "-c", code % (str(path), str(Path(tmp) / "o.jsonl"))],
            capture_output=True,
            text=True,
            env=env,
            cwd=ROOT,
            check=True,
        )
        base = subprocess.run(
            [sys.executable, "-c", load_only], capture_output=True, text=True, env=env, cwd=ROOT, check=True
        )
    scored = int(run.stdout.strip().splitlines()[-1]) / 1024
    loaded = int(base.stdout.strip().splitlines()[-1]) / 1024
    return {
        "precision": precision,
        "peak_rss_mb": round(scored, 1),
        "model_loaded_rss_mb": round(loaded, 1),
        "above_loaded_model_mb": round(scored - loaded, 1),
    }


def worker_child_peak_rss_mb(model: Path, path: Path, tmp: Path) -> float:
    """Peak RSS of the worker child that scores ``path``, through ``audioset run`` (a real Celery worker on the
    embedded broker): read from each pool process's VmHWM once the result is written."""
    root = tmp / "rss-run"
    shutil.rmtree(root, ignore_errors=True)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "AUDIOSET_MODEL_PATH": str(model)}
    with (tmp / "rss-run.log").open("wb") as log:
        run = subprocess.Popen(
            [sys.executable, "-m", "cli", "run", "--root", str(root)],
            env=env,
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            result = root / "results" / "predictions" / "incoming" / "rss.h5.summary.json"
            deadline = time.monotonic() + 3600
            while not (root / "incoming").is_dir():
                time.sleep(0.2)
            shutil.copy(path, root / "incoming" / ".rss.h5.part")
            (root / "incoming" / ".rss.h5.part").rename(root / "incoming" / "rss.h5")
            while not result.exists() and time.monotonic() < deadline and run.poll() is None:
                time.sleep(0.5)
            peaks = [_hwm_kib(pid) for pid in _descendants(run.pid)]
        finally:
            run.send_signal(2)
            run.wait(120)
    return round(max(peaks) / 1024, 1)


def _descendants(pid: int) -> list[int]:
    from tests.faults.conftest import child_pids

    children = child_pids(pid)
    return children + [grandchild for child in children for grandchild in _descendants(child)]


def _hwm_kib(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    return next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")), 0)
