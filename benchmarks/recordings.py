"""``python -m benchmarks.recordings [--clips N]``: recordings measured honestly, on real AudioSet clips; JSON.

Long recordings are built from ``eval_half.h5`` (under ``AUDIOSET_DATA_DIR``) by joining its clips end to end, an
hour (360 clips) per recording, each 10 s clip keeping its labels, and scored as recordings by the shipped model:

- **aligned**: with a hop of 10 frames the windows fall on the clip boundaries, so each window's scores should be
  its clip's: the mAP of the windows against their clips' labels, beside the clips scored as clips;
- **events** at the default hop and threshold: precision (an event's span overlaps a clip carrying its class)
  and recall (a labelled clip-class pair is overlapped by an event of that class);
- **short clips**: the clips cut to their first 5 frames, each one window zero-padded as AudioSet pads short clips;
- **speed and memory**: windows per second against clips per second, and the peak RSS of ``audioset score`` of
  a 24-hour recording (86,400 frames).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import orjson

from benchmarks.files import ROOT, audioset_data

CLIPS_PER_RECORDING = 360


def _scorer(hop: int) -> Any:
    from audioset_batch.scoring.pipeline import ObjectScorer
    from audioset_batch.settings import load_settings

    return ObjectScorer.from_settings(load_settings(window_hop=hop))


def _score(scorer: Any, path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]], float]:
    out, events = io.BytesIO(), io.BytesIO()
    started = time.perf_counter()
    scorer.score_local(path, out, "bench", events_out=events)
    seconds = time.perf_counter() - started
    records = [orjson.loads(line) for line in out.getvalue().splitlines()]
    return records, [orjson.loads(line) for line in events.getvalue().splitlines()], seconds


def _scores(records: list[dict[str, Any]], classes: int, scorer: Any) -> np.ndarray:
    """Full score rows back from top-k records is impossible: the scorer writes full scores for this."""
    return np.asarray([r["scores"] for r in records], dtype=np.float32).reshape(-1, classes)


def measure(data: Path, clips: int, tmp: Path) -> dict[str, Any]:
    from model.metrics import evaluate

    with h5py.File(data / "eval_half.h5", "r") as f:
        x = np.asarray(f["x"][:clips])
        y = np.asarray(f["y"][:clips]).astype(bool)
    clips = len(x) - len(x) % CLIPS_PER_RECORDING or len(x)
    x, y = x[:clips], y[:clips]
    per = min(CLIPS_PER_RECORDING, clips)
    report: dict[str, Any] = {"clips": clips, "recordings": clips // per, "clips_per_recording": per}

    plain = tmp / "clips.h5"
    with h5py.File(plain, "w") as f:
        f["x"] = x
    joined = tmp / "joined.h5"
    with h5py.File(joined, "w") as f:
        f["x"] = x.reshape(clips // per, per * 10, 128)
        f["x"].attrs["seconds_per_frame"] = 1.0
    short = tmp / "short.h5"
    with h5py.File(short, "w") as f:
        f["x"] = x[:, :5]

    aligned = _scorer(10)
    aligned.options = type(aligned.options)(**{**_fields(aligned.options), "full_scores": True})
    clip_records, _, clip_seconds = _score(aligned, plain)
    window_records, _, window_seconds = _score(aligned, joined)
    short_records, _, _ = _score(aligned, short)
    classes = len(aligned.classes)
    clip_map = evaluate(y, _scores(clip_records, classes, aligned)).mean_average_precision
    window_map = evaluate(y, _scores(window_records, classes, aligned)).mean_average_precision
    short_map = evaluate(y, _scores(short_records, classes, aligned)).mean_average_precision
    report["aligned"] = {
        "clip_mAP": round(clip_map, 4),
        "window_mAP": round(window_map, 4),
        "max_abs_score_difference": float(
            np.abs(_scores(clip_records, classes, aligned) - _scores(window_records, classes, aligned)).max()
        ),
    }
    report["short_clips_5_frames"] = {"mAP": round(short_map, 4), "full_10_frames_mAP": round(clip_map, 4)}

    default = _scorer(int(os.environ.get("AUDIOSET_WINDOW_HOP", "5")))
    windows, events, default_seconds = _score(default, joined)
    report["events"] = {
        "hop": default.options.window_hop,
        "threshold": default.options.event_threshold,
        **event_quality(events, y, per),
    }
    report["speed"] = {
        "clips_per_second_as_clips": round(clips / clip_seconds, 1),
        "windows_per_second_hop_10": round(len(window_records) / window_seconds, 1),
        "windows_per_second_default_hop": round(len(windows) / default_seconds, 1),
        "windows_default_hop": len(windows),
    }
    report["day_recording"] = _day_rss(tmp)
    return report


def _fields(options: Any) -> dict[str, Any]:
    return {name: getattr(options, name) for name in options.__dataclass_fields__}


def event_quality(events: list[dict[str, Any]], y: np.ndarray, per: int) -> dict[str, Any]:
    """Clip k of recording r spans [10k, 10k+10) s of it; an event overlaps the clips its span touches."""
    hit = 0
    covered = np.zeros_like(y)
    for event in events:
        first = per * event["index"]
        lo = int(event["start_seconds"] // 10)
        hi = int(np.ceil(event["end_seconds"] / 10))
        touched = np.arange(first + lo, first + min(hi, per))
        c = event["class"]["index"]
        if y[touched, c].any():
            hit += 1
        covered[touched, c] |= y[touched, c]
    positives = int(y.sum())
    return {
        "events": len(events),
        "precision": round(hit / len(events), 4) if events else None,
        "recall": round(float(covered.sum()) / positives, 4) if positives else None,
        "labelled_clip_classes": positives,
    }


def _day_rss(tmp: Path) -> dict[str, Any]:
    """``audioset score`` of one 24-hour recording in its own process: its peak RSS and windows per second."""
    day = tmp / "day.h5"
    with h5py.File(day, "w") as f:
        f.create_dataset("x", data=np.random.default_rng(0).integers(0, 256, size=(86_400, 128), dtype=np.uint8))
    code = (
        "import sys,runpy,time; sys.argv=['audioset','score',%r,'-o',%r,'--quiet']; t=time.perf_counter()\n"
        "try:\n    runpy.run_module('cli', run_name='__main__')\n"
        "except SystemExit: pass\n"
        "print(time.perf_counter()-t)\n"
        "print(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM:')))"
    )
    run = subprocess.run(
        [sys.executable, "-c", code % (str(day), str(tmp / "day.jsonl"))],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    seconds, peak = run.stdout.strip().splitlines()[-2:]
    windows = sum(1 for _ in (tmp / "day.jsonl").open("rb"))
    return {
        "frames": 86_400,
        "windows": windows,
        "seconds_with_model_load": round(float(seconds), 1),
        "peak_rss_mb": round(int(peak) / 1024, 1),
        "events": sum(1 for _ in (tmp / "day.events.jsonl").open("rb")),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.recordings", description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=10_080, help="eval_half clips to use (whole hours of 360)")
    args = parser.parse_args()
    data = audioset_data("eval_half.h5")
    with tempfile.TemporaryDirectory(prefix="recordings-bench-") as tmp:
        print(json.dumps(measure(data, args.clips, Path(tmp)), indent=2))


if __name__ == "__main__":
    main()
