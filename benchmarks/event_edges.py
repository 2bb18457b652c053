"""``python -m benchmarks.event_edges [--clips N]``: do per-frame outputs place event edges better than windows?

Real ``eval_half.h5`` clips joined into hour-long recordings (as :mod:`benchmarks.recordings`); the shipped model's
events found from its windows at the default hop (what the service writes); then the same events with their edges
moved to the frame by per-frame evidence: the decision-level member's fusion layer applied to each frame's two
attention heads (its clip output is that layer applied to their attention-weighted means), its first and last frame
at or above the class's threshold inside the event's first and last window; ``held_frame`` the same with the whole
served model's score of each frame held for a window's 10 frames (any architecture, no change to the graph). Both
are measured in time against the clips' labels, a clip's label holding for its whole 10 s (the only truth AudioSet
has):

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
SCALES = (1.0, 0.5, 0.25)


def frame_probabilities(x: np.ndarray) -> np.ndarray:
    """Per-frame probabilities ``(recordings, frames, classes)`` of the shipped ensemble's decision-level member."""
    import keras

    from model.artifact import DEFAULT_ARTIFACT, load
    from model.ensemble import member_networks
    from model.inference import dequantize

    ensemble, _ = load(DEFAULT_ARTIFACT)
    member = next(m for m in member_networks(ensemble) if "fusion" in [layer.name for layer in m.layers])
    heads = keras.Model(member.input, [member.get_layer("head2_cla").output, member.get_layer("head3_cla").output])
    kernel, bias = (np.asarray(w, dtype=np.float64) for w in member.get_layer("fusion").get_weights())
    recordings, frames = x.shape[:2]
    clips = x.reshape(recordings * frames // WINDOW, WINDOW, 128)  # frame-wise layers: any cut gives the same frames
    out = []
    for start in range(0, len(clips), 2048):
        head2, head3 = heads.predict(dequantize(clips[start : start + 2048]), verbose=0)
        logits = np.concatenate([head2, head3], axis=-1).astype(np.float64) @ kernel + bias
        out.append((1 / (1 + np.exp(-logits))).astype(np.float32))
    return np.concatenate(out).reshape(recordings, frames, -1)


def held_frame_probabilities(x: np.ndarray) -> np.ndarray:
    """Per-frame probabilities of the whole served model: each frame held for a window's 10 frames (every pooling
    of identical frames gives that frame's own output), so any artifact has them with no change to its graph."""
    from model.artifact import DEFAULT_ARTIFACT
    from model.inference import Predictor

    predictor = Predictor.from_artifact(DEFAULT_ARTIFACT, precision="float32")
    frames = x.reshape(-1, 128)
    out = [
        predictor.predict(np.repeat(frames[i : i + 4096, None, :], WINDOW, axis=1)) for i in range(0, len(frames), 4096)
    ]
    return np.concatenate(out).reshape(x.shape[0], x.shape[1], -1)


def refined(event: dict[str, Any], frames: np.ndarray, threshold: float, hop: int) -> tuple[float, float]:
    """The event's span with each edge moved to the first (last) frame at or above ``threshold`` within its first
    (last) window; an edge with no such frame stays where the windows put it.

    A window-made event spans the middle ``hop`` frames of each of its windows (``event_spans``), so its first
    window reaches ``(10 - hop) / 2`` frames before its start and its last window as far past its end.
    """
    margin = (WINDOW - hop) / 2
    start, end = float(event["start_seconds"]), float(event["end_seconds"])
    reach_start = int(max(0.0, start - margin)) if start > 0 else 0
    reach_end = min(len(frames), int(np.ceil(end + margin)))
    c = event["class"]["index"]
    first = [t for t in range(reach_start, min(reach_start + WINDOW, reach_end)) if frames[t, c] >= threshold]
    new_start = float(first[0]) if first else start
    last = [t for t in range(max(reach_end - WINDOW, int(new_start)), reach_end) if frames[t, c] >= threshold]
    new_end = float(last[-1] + 1) if last else end
    return new_start, max(new_end, new_start + 1)


def edge_windows(events: list[dict[str, Any]], hop: int) -> set[tuple[int, int]]:
    """The distinct (recording, window start) pairs where an event starts or ends: what held-frame evidence would
    cost in served rows (ten per such window)."""
    margin = (WINDOW - hop) / 2
    found = set()
    for e in events:
        start, end = float(e["start_seconds"]), float(e["end_seconds"])
        found.add((e["index"], int(max(0.0, start - margin)) if start > 0 else 0))
        found.add((e["index"], int(np.ceil(end + margin)) - WINDOW))
    return found


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


def measure(data: Path, clips: int) -> dict[str, Any]:
    from audioset_batch.scoring.pipeline import ObjectScorer
    from audioset_batch.settings import load_settings

    with h5py.File(data / "eval_half.h5", "r") as f:
        x = np.asarray(f["x"][:clips])
        y = np.asarray(f["y"][:clips]).astype(bool)
    per = CLIPS_PER_RECORDING
    clips = len(x) - len(x) % per
    x, y = x[:clips].reshape(clips // per, per * WINDOW, 128), y[:clips]
    scorer = ObjectScorer.from_settings(load_settings(precision="float32"))
    with tempfile.TemporaryDirectory(prefix="edges-bench-") as tmp:
        joined = Path(tmp) / "joined.h5"
        with h5py.File(joined, "w") as f:
            f["x"] = x
            f["x"].attrs["seconds_per_frame"] = 1.0
        events_out, scored = io.BytesIO(), io.BytesIO()
        scorer.score_local(joined, scored, "bench", events_out=events_out)
    events = [orjson.loads(line) for line in events_out.getvalue().splitlines()]
    thresholds = scorer.options.thresholds
    frames = frame_probabilities(x)
    hop = scorer.options.window_hop
    window_total = len(scored.getvalue().splitlines())
    windows = [(e["index"], e["class"]["index"], e["start_seconds"], e["end_seconds"]) for e in events]
    report: dict[str, Any] = {
        "clips": clips,
        "recordings": clips // per,
        "hop": hop,
        "events": len(events),
        "windows": window_total,
        "edge_windows": len(edge_windows(events, hop)),
        "window_edges": time_quality(windows, y, per),
    }
    held = held_frame_probabilities(x)
    for name, evidence in (("per_frame", frames), ("held_frame", held)):
        for scale in SCALES:  # the frame threshold as a share of the class's threshold: frames score lower
            edges = [
                (e["index"], c, *refined(e, evidence[e["index"]], scale * thresholds[c], hop))
                for e in events
                for c in [e["class"]["index"]]
            ]
            moved = sum(1 for a, b in zip(windows, edges, strict=True) if a[2:] != b[2:])
            report[f"{name}_edges_at_{scale:g}_x_threshold"] = {**time_quality(edges, y, per), "events_moved": moved}
    return report


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.event_edges", description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", type=int, default=10_080, help="eval_half clips to use (whole hours of 360)")
    args = parser.parse_args()
    print(json.dumps(measure(audioset_data("eval_half.h5"), args.clips), indent=2))


if __name__ == "__main__":
    main()
