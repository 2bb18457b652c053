"""Recordings of any length: windows, window records, events, and clip metrics pooled from windows."""

from __future__ import annotations

import io
from pathlib import Path

import h5py
import numpy as np
import orjson
import pytest

from audioset_batch.errors import ConfigError, EmptyDatasetError, FrameCountError, LayoutError, LimitExceededError
from audioset_batch.scoring import recordings
from audioset_batch.scoring.clip_records import OutputOptions
from audioset_batch.scoring.hdf5_reader import EmbeddingFile, Limits
from audioset_batch.scoring.pipeline import ObjectScorer, score_file
from audioset_batch.scoring.window_reader import window_chunks
from audioset_batch.scoring.windows import (
    FRAME_EDGE_SCALE,
    EventTracker,
    HeardFrames,
    event_spans,
    frame_edges,
    heard_frames,
)
from audioset_batch.settings import load_settings
from model.clip_windows import cut_windows, hop_starts
from tests.helpers import make_labels

CLASSES = make_labels(4)


def mean_model(x: np.ndarray) -> np.ndarray:
    """Scores from the mean of each window's frames: a window of the same frames always scores the same."""
    means = np.asarray(x, dtype=np.float32).mean(axis=(1, 2)) / 255.0
    return np.stack([means, 1 - means, np.full_like(means, 0.1), np.full_like(means, 0.9)], axis=1)


def write(path: Path, x: np.ndarray, **extra: np.ndarray) -> Path:
    with h5py.File(path, "w") as f:
        f.create_dataset("x", data=x)
        for name, data in extra.items():
            f.create_dataset(name, data=data)
    return path


def score(path: Path, options: OutputOptions | None = None, **kwargs: object) -> tuple[list[dict], list[dict], object]:
    out, events = io.BytesIO(), io.BytesIO()
    result = score_file(
        path,
        out,
        predict=mean_model,
        classes=CLASSES,
        model="m@1",
        source="b/k.h5",
        options=options or OutputOptions(),
        frames=10,
        events_out=events,
        **kwargs,  # type: ignore[arg-type]
    )
    records = [orjson.loads(line) for line in out.getvalue().splitlines()]
    return records, [orjson.loads(line) for line in events.getvalue().splitlines()], result


def test_windows_cover_every_frame_and_short_clips_are_one_padded_window() -> None:
    assert hop_starts(25, 10, 5).tolist() == [0, 5, 10, 15]
    assert hop_starts(23, 10, 5).tolist() == [0, 5, 10, 13]  # a last window flush with the end
    assert hop_starts(30, 10, 10).tolist() == [0, 10, 20]
    assert hop_starts(7, 10, 5).tolist() == [0]
    frames = np.arange(7 * 128, dtype=np.uint8).reshape(7, 128)
    (window,) = cut_windows(frames, 0, np.array([0]), 10)
    assert window.shape == (10, 128) and (window[:7] == frames).all() and not window[7:].any()  # zero-padded
    frames = np.arange(30 * 128).reshape(30, 128)
    windows = cut_windows(frames[5:], 5, np.array([5, 10, 15]), 10)
    assert [int(w[0, 0]) for w in windows] == [5 * 128, 10 * 128, 15 * 128]


def test_events_merge_consecutive_windows_of_a_clip_and_end_at_a_gap_or_a_new_clip() -> None:
    tracker = EventTracker(np.array([0.5, 0.5]), make_labels(2))
    clips = np.array([0, 0, 0, 0, 1, 1])
    starts = np.arange(6, dtype=float) * 5
    scores = np.array([[0.9, 0.1], [0.8, 0.1], [0.1, 0.7], [0.6, 0.7], [0.9, 0.1], [0.9, 0.1]])
    first = list(tracker.feed(clips[:3], starts[:3], starts[:3] + 5, scores[:3], starts[:3]))
    rest = list(tracker.feed(clips[3:], starts[3:], starts[3:] + 5, scores[3:], starts[3:])) + list(tracker.finish())
    ended = [(clip, label.index, event.start, event.end, event.windows) for clip, label, event in first + rest]
    assert ended == [(0, 0, 0.0, 10.0, 2), (0, 1, 10.0, 20.0, 2), (0, 0, 15.0, 20.0, 1), (1, 0, 20.0, 30.0, 2)]
    assert max(event.peak for _, label, event in first + rest if label.index == 0) == 0.9


def test_event_spans_tile_a_clip_without_overlap() -> None:
    starts = hop_starts(23, 10, 5)
    begin, end = event_spans(starts, 23, 10, 5)
    assert begin.tolist() == [0.0, 7.5, 12.5, 15.5] and end.tolist() == [7.5, 12.5, 17.5, 23.0]
    begin, end = event_spans(hop_starts(30, 10, 10), 30, 10, 10)
    assert begin.tolist() == [0, 10, 20] and end.tolist() == [10, 20, 30]


def frame_model(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`mean_model` with each frame's own scores: class 0 hears a frame by its loudness."""
    frames = np.asarray(x, dtype=np.float32).mean(axis=2) / 255.0
    evidence = np.stack([frames, 1 - frames, np.full_like(frames, 0.1), np.full_like(frames, 0.9)], axis=2)
    return mean_model(x), evidence


def test_frame_edges_fall_on_the_first_and_last_frame_heard_never_on_padding() -> None:
    scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.9, 0.9]])
    evidence = np.zeros((3, 10, 2), dtype=np.float32)
    evidence[0, 3:7, 0] = 0.4  # window 0 (frames 0..9): class 0 heard on frames 3..6
    evidence[1, 8:, 1] = 0.9  # window 1 starts at frame 5 of a 12-frame clip: frames 13, 14 are padding
    evidence[1, 6, 1] = 0.9
    evidence[1, :, 0] = 0.9  # class 0 is not present in window 1: its frames are not kept
    heard = heard_frames(scores, evidence, np.array([0.5, 0.5]), np.array([0.3, 0.3]))
    assert list(zip(heard.rows.tolist(), heard.classes.tolist(), strict=True)) == [(0, 0), (1, 1), (2, 0), (2, 1)]
    edges = frame_edges(heard, np.array([0, 5, 2]), 12, 0.5)
    assert edges == {(0, 0): (1.5, 3.5), (1, 1): (5.5, 6.0)}  # in seconds; window 2 heard nothing: its span stands
    joined = HeardFrames.joined([(0, heard), (3, heard)])
    assert joined.rows.tolist() == [0, 1, 2, 2, 3, 4, 5, 5] and joined.heard.shape == (8, 10)


def test_an_event_takes_its_start_from_its_first_window_and_its_end_from_its_last() -> None:
    tracker = EventTracker(np.array([0.5]), make_labels(1), shortest=1.0)
    scores = np.array([[0.9], [0.9], [0.9]])
    clip = np.zeros(3, dtype=int)
    spans = np.array([0.0, 5.0, 10.0]), np.array([5.0, 10.0, 15.0])
    edges = {(0, 0): (8.0, 9.0), (1, 0): (9.0, 12.0)}  # the last window heard nothing: its span's end stands
    (only,) = [e for _, _, e in [*tracker.feed(clip, *spans, scores, np.arange(3.0), edges), *tracker.finish()]]
    assert (only.start, only.end, only.windows) == (8.0, 15.0, 3)
    crossed = EventTracker(np.array([0.5]), make_labels(1), shortest=1.0)  # edges from two windows that cross
    edges = {(0, 0): (9.0, 10.0), (1, 0): (5.0, 6.0)}
    ended = [*crossed.feed(clip[:2], spans[0][:2], spans[1][:2], scores[:2], np.zeros(2), edges)]
    (event,) = [e for _, _, e in [*ended, *crossed.finish()]]
    assert (event.start, event.end) == (9.0, 10.0)  # at least one frame long, never negative


def test_events_are_placed_to_the_frame_where_the_model_scores_frames(tmp_path: Path) -> None:
    x = np.zeros((40, 128), dtype=np.uint8)
    x[21:29] = 255  # class 0 sounds on frames 21..28
    path = write(tmp_path / "day.h5", x)
    with h5py.File(path, "a") as f:
        f["x"].attrs["seconds_per_frame"] = 1.0
    options = OutputOptions(window_hop=5, event_threshold=0.5)
    records, by_window, spans = score(path, options)
    framed_records, by_frame, framed = score(path, options, predict_frames=frame_model)
    assert records == framed_records  # the records are the windows' either way
    loud = [(e["start_seconds"], e["end_seconds"], e["windows"]) for e in by_window if e["class"]["index"] == 0]
    assert loud == [(22.5, 27.5, 1)]  # the window at 20 s: its middle five frames
    loud = [(e["start_seconds"], e["end_seconds"], e["windows"]) for e in by_frame if e["class"]["index"] == 0]
    assert loud == [(21.0, 29.0, 1)]  # the frames themselves
    assert (spans.event_edges, framed.event_edges) == ("windows", "frames")  # type: ignore[attr-defined]
    assert 0 < FRAME_EDGE_SCALE < 1


def test_evidence_is_reduced_a_few_windows_at_a_time_with_the_same_events(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    x = np.random.default_rng(7).integers(0, 256, size=(3, 57, 128), dtype=np.uint8)
    path = write(tmp_path / "three.h5", x)
    options = OutputOptions(window_hop=3, event_threshold=0.5)
    _, whole, _ = score(path, options, predict_frames=frame_model)
    seen: list[int] = []

    def counted(batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        seen.append(len(batch))
        return frame_model(batch)

    monkeypatch.setattr(recordings, "EVIDENCE_ROWS", 4)
    _, pieces, _ = score(path, options, predict_frames=counted)
    assert pieces == whole and len(whole) > 3 and max(seen) == 4 and sum(seen) == 3 * 17


def test_a_recording_gets_one_record_per_window_with_its_offset_and_events_beside(tmp_path: Path) -> None:
    x = np.zeros((40, 128), dtype=np.uint8)
    x[20:] = 255  # loud from frame 20: class 0 scores 1.0 there, 0.0 before
    path = write(tmp_path / "day.h5", x)
    with h5py.File(path, "a") as f:
        f["x"].attrs["seconds_per_frame"] = 1.0
    records, events, result = score(path, OutputOptions(window_hop=5, event_threshold=0.5))
    assert [(r["offset_seconds"], r["end_seconds"]) for r in records] == [
        (0, 10),
        (5, 15),
        (10, 20),
        (15, 25),
        (20, 30),
        (25, 35),
        (30, 40),
    ]
    assert {r["index"] for r in records} == {0} and result.windows == 7 and result.clips == 1  # type: ignore[attr-defined]
    loud = [e for e in events if e["class"]["index"] == 0]
    assert [(e["start_seconds"], e["end_seconds"], e["windows"]) for e in loud] == [
        (17.5, 40.0, 4)
    ]  # the window at 15 s is half loud: 0.5
    always = [e for e in events if e["class"]["index"] == 3]  # 0.9 everywhere: one event, the whole recording
    assert [(e["start_seconds"], e["end_seconds"]) for e in always] == [(0.0, 40.0)]
    assert result.events == len(events)  # type: ignore[attr-defined]


def test_clips_longer_than_the_model_keep_their_ids_and_times_and_metrics_pool_their_windows(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(3, 23, 128), dtype=np.uint8)
    y = np.array([[1, 0, 0, 1], [0, 1, 0, 1], [1, 1, 0, 0]], dtype=bool)
    ids = np.array([b"aaa", b"bbb", b"ccc"])
    path = write(tmp_path / "long.h5", x, video_id_list=ids, start_time_seconds=np.array([30.0, 0.0, 10.0]), y=y)
    records, events, result = score(path)
    assert len(records) == 3 * 4  # 23 frames: windows at 0, 5, 10, 13
    assert [r["video_id"] for r in records[:5]] == ["aaa"] * 4 + ["bbb"]
    assert records[4]["start_time_seconds"] == 0.0 and records[3]["start_time_seconds"] == 30.0
    assert all(e["video_id"] in {"aaa", "bbb", "ccc"} for e in events)
    assert result.metrics is not None and result.metrics["clips"] == 3  # type: ignore[attr-defined]


def test_aligned_windows_of_a_joined_recording_score_exactly_as_its_clips(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    clips = rng.integers(0, 256, size=(4, 10, 128), dtype=np.uint8)
    plain, _, _ = score(write(tmp_path / "clips.h5", clips))
    joined = write(tmp_path / "joined.h5", clips.reshape(40, 128))
    windows, _, _ = score(joined, OutputOptions(window_hop=10))
    assert len(plain) == len(windows) == 4
    assert "offset_seconds" not in plain[0]  # files of 10-frame clips keep their records unchanged
    assert [r["labels"] for r in plain] == [r["labels"] for r in windows]


def test_bad_recordings_and_settings_get_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(EmptyDatasetError, match="no frames"):
        score(write(tmp_path / "empty.h5", np.zeros((0, 128), dtype=np.uint8)))
    with pytest.raises(LimitExceededError, match="AUDIOSET_MAX_FRAMES=50"):
        score(write(tmp_path / "long.h5", np.zeros((60, 128), dtype=np.uint8)), limits=Limits(max_frames=50))
    bad = write(tmp_path / "spf.h5", np.zeros((20, 128), dtype=np.uint8))
    with h5py.File(bad, "a") as f:
        f.attrs["seconds_per_frame"] = -1.0
    with pytest.raises(LayoutError, match="seconds_per_frame"):
        score(bad)
    with pytest.raises(FrameCountError, match="takes 10"):  # training data must still be 10-frame clips
        EmbeddingFile(write(tmp_path / "t.h5", np.zeros((2, 12, 128), dtype=np.uint8)), frames=10)
    settings = load_settings(window_hop=12)
    with pytest.raises(ConfigError, match=r"AUDIOSET_WINDOW_HOP=12.*1\.\.10"):
        ObjectScorer(settings, mean_model, CLASSES, "m@1", 10)


def test_a_long_recording_is_read_a_slice_at_a_time(tmp_path: Path) -> None:
    x = np.random.default_rng(2).integers(0, 256, size=(5000, 128), dtype=np.uint8)
    path = write(tmp_path / "long.h5", x)
    with EmbeddingFile(path, Limits(max_read_bytes=64 * 1024), frames=10, windows=True) as embeddings:
        chunks = list(window_chunks(embeddings, 10, 5, 100_000))
    assert len(chunks) > 10 and max(len(c.x) for c in chunks) <= 64 * 1024 // (2 * 10 * 128)
    assert sum(len(c.x) for c in chunks) == len(hop_starts(5000, 10, 5))
    assert (chunks[3].x[0] == x[chunks[3].frame_starts[0] : chunks[3].frame_starts[0] + 10]).all()


def test_a_recording_declaring_more_frames_than_allowed_is_refused_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "huge.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("x", shape=(50_000_000, 128), dtype=np.uint8, chunks=(1000, 128), compression="gzip")
    with pytest.raises(LimitExceededError, match="50000000 frames"):
        EmbeddingFile(path, frames=10, windows=True)


def test_evaluate_takes_clips_of_any_length_as_the_maximum_over_their_windows(tiny_model: Path, tmp_path: Path) -> None:
    import json

    from click.testing import CliRunner

    from audioset_batch.scoring.windows import pooled_clip_scores
    from cli import main
    from model.inference import Predictor
    from model.metrics import evaluate

    classes = 12
    rng = np.random.default_rng(5)
    x = rng.integers(0, 256, size=(40, 23, 128), dtype=np.uint8)
    y = rng.random((40, classes)) < 0.3
    y[0], y[-1] = True, False
    path = write(tmp_path / "long.h5", x, y=y)
    result = CliRunner().invoke(main, ["evaluate", str(tiny_model), str(path), "--json", "--precision", "float32"])
    assert result.exit_code == 0, result.output
    reported = json.loads(result.output.strip().splitlines()[-1])["mAP"]
    predictor = Predictor.from_artifact(tiny_model, precision="float32")
    expected = evaluate(y, pooled_clip_scores(predictor.predict, x, 10, 5)).mean_average_precision
    assert reported == pytest.approx(expected, abs=1e-6)
    recording = write(tmp_path / "rec.h5", x[0])
    refused = CliRunner().invoke(main, ["evaluate", str(tiny_model), str(recording)])
    assert refused.exit_code != 0 and "evaluation takes clips" in refused.output and "Traceback" not in refused.output


def test_event_search_finds_a_label_by_its_peak_and_links_the_peak_second() -> None:
    from audioset_batch.results.search import search_events

    def event(index: int, peak: float, at: float, name: str = "Class 1") -> dict[str, object]:
        label = {"index": int(name.split()[-1]), "name": name}
        return {
            "source": "b/k.h5",
            "index": index,
            "video_id": "abc",
            "start_time_seconds": 30.0,
            "class": label,
            "start_seconds": at - 2,
            "end_seconds": at + 5,
            "peak_score": peak,
            "peak_seconds": at,
        }

    records = [
        event(0, 0.4, 10),
        event(1, 0.9, 20),
        event(1, 0.7, 50, "Class 2"),
        {"not": "an event"},
        event(2, 0.2, 0),
    ]
    hits = search_events(records, make_labels(3)[1], min_score=0.3, limit=5)
    assert [(h.index, h.score) for h in hits] == [(1, 0.9), (0, 0.4)]
    assert hits[0].youtube_url == "https://www.youtube.com/watch?v=abc&t=50"  # start time 30 + peak at 20


def test_short_clips_are_read_many_to_a_chunk_not_one_model_call_each(tmp_path: Path) -> None:
    x = np.random.default_rng(3).integers(0, 256, size=(300, 7, 128), dtype=np.uint8)
    ids = np.array([f"id{i}".encode() for i in range(300)])
    path = write(tmp_path / "short.h5", x, video_id_list=ids)
    with EmbeddingFile(path, frames=10, windows=True) as embeddings:
        chunks = list(window_chunks(embeddings, 10, 5, 128))
    assert len(chunks) == 3 and [len(c.x) for c in chunks] == [128, 128, 44]
    assert chunks[1].clip_index.tolist()[:2] == [128, 129] and chunks[1].video_ids[:2] == ["id128", "id129"]  # type: ignore[union-attr,index]
    assert (chunks[1].x[0, :7] == x[128]).all() and not chunks[1].x[0, 7:].any()  # zero-padded as before
