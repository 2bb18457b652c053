"""``python -m benchmarks.event_edges [--clips N]``: how well do events' edges fall in time, from frames or windows?

Real ``eval_half.h5`` clips joined into hour-long recordings (as :mod:`benchmarks.recordings`) and scored by the
shipped model at the default hop, as the service scores them: events with their edges on the frames (the model's
per-frame evidence at :data:`~audioset_batch.scoring.windows.FRAME_EDGE_SCALE` of each class's threshold, what the
service writes), the same with other shares of the threshold, and with edges on the window spans (a model without
per-frame evidence). Each is measured in time against the clips' labels, a clip's label holding for its whole 10 s
(the only truth AudioSet has):

- time precision: the share of event seconds inside clips carrying the event's class;
- time recall: the share of labelled clip-class seconds an event of that class covers.
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import orjson

from benchmarks.files import audioset_data
from benchmarks.recordings import CLIPS_PER_RECORDING

WINDOW = 10
SCALES = (1.0, 0.5, 0.25, 0.125)


def time_quality(spans: list[tuple[int, int, float, float]], y: np.ndarray, per: int) -> dict[str, float]:
    """``spans`` of (recording, class, start, end) seconds against clip labels held for each clip's 10 s."""
    inside = total = 0.0
    covered: dict[tuple[int, int], np.ndarray] = {}
    for recording, c, start, end in spans:
        total += end - start
        for k in range(int(start // 10), min(int(np.ceil(end / 10)), per)):
            lo, hi = max(start, 10.0 * k), min(end, 10.0 * k + 10)
            if hi > lo and y[recording * per + k, c]:
                inside += hi - lo
                mask = covered.setdefault((recording * per + k, c), np.zeros(10, dtype=bool))
                mask[int(lo - 10 * k) : int(np.ceil(hi - 10 * k))] = True
    precision = inside / total if total else 0.0
    recall = sum(int(m.sum()) for m in covered.values()) / (10.0 * float(y.sum()))
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"time_precision": round(precision, 4), "time_recall": round(recall, 4), "f1": round(f1, 4)}


def measure(data: Path, clips: int, precision: str) -> dict[str, Any]:
    import audioset_batch.scoring.recordings as recordings
    from audioset_batch.scoring.pipeline import ObjectScorer
    from audioset_batch.scoring.windows import FRAME_EDGE_SCALE
    from audioset_batch.settings import load_settings

    with h5py.File(data / "eval_half.h5", "r") as f:
        x = np.asarray(f["x"][:clips])
        y = np.asarray(f["y"][:clips]).astype(bool)
    per = CLIPS_PER_RECORDING
    clips = len(x) - len(x) % per
    x, y = x[:clips].reshape(clips // per, per * WINDOW, 128), y[:clips]
    scorer = ObjectScorer.from_settings(load_settings(precision=precision))
    served = FRAME_EDGE_SCALE
    report: dict[str, Any] = {"clips": clips, "recordings": clips // per, "hop": scorer.options.window_hop}
    with tempfile.TemporaryDirectory(prefix="edges-bench-") as tmp:
        joined = Path(tmp) / "joined.h5"
        with h5py.File(joined, "w") as f:
            f["x"] = x
            f["x"].attrs["seconds_per_frame"] = 1.0

        def events_of(predict_frames: Any) -> list[tuple[int, int, float, float]]:
            scorer.predict_frames = predict_frames
            events_out = io.BytesIO()
            scorer.score_local(joined, io.BytesIO(), "bench", events_out=events_out)
            events = [orjson.loads(line) for line in events_out.getvalue().splitlines()]
            return [(e["index"], e["class"]["index"], e["start_seconds"], e["end_seconds"]) for e in events]

        with_frames = scorer.predict_frames
        windows = events_of(None)
        report["events"] = len(windows)
        report["window_edges"] = time_quality(windows, y, per)
        try:
            for scale in SCALES:  # the frame threshold as a share of the class's threshold: frames score lower
                recordings.FRAME_EDGE_SCALE = scale  # type: ignore[attr-defined]  # read by recordings at each call
                name = "frame_edges_served" if scale == served else f"frame_edges_at_{scale:g}_x_threshold"
                report[name] = {**time_quality(events_of(with_frames), y, per), "frame_edge_scale": scale}
        finally:
            recordings.FRAME_EDGE_SCALE = served  # type: ignore[attr-defined]
    return report


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.event_edges", description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=10_080, help="eval_half clips to use (whole hours of 360)")
    parser.add_argument("--precision", default="auto", help="the precision to serve in (default: auto)")
    args = parser.parse_args()
    print(json.dumps(measure(audioset_data("eval_half.h5"), args.clips, args.precision), indent=2))


if __name__ == "__main__":
    main()
