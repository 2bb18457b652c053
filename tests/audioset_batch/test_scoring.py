from __future__ import annotations

import io
from pathlib import Path

import h5py
import numpy as np
import orjson
import pytest

from audioset_batch.errors import InvalidObjectKeyError, LimitExceededError
from audioset_batch.results.keys import result_keys
from audioset_batch.scoring.clip_records import OutputOptions, encode_records, score_chunk, top_k
from audioset_batch.scoring.pipeline import score_file
from model.inference import dequantize
from tests.helpers import make_labels, write_h5


def test_dequantize_maps_uint8_to_unit_range() -> None:
    x = np.array([[[0, 128, 255]]], dtype=np.uint8)
    np.testing.assert_allclose(dequantize(x), [[[-1.0, 0.0, 127 / 128]]])
    assert dequantize(x).dtype == np.float32


def test_dequantize_passes_float_through() -> None:
    x = np.array([[[0.25, -0.5]]], dtype=np.float64)
    out = dequantize(x)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, x)


def test_top_k_orders_by_score_and_breaks_ties_by_class() -> None:
    scores = np.array([[0.1, 0.9, 0.5, 0.9, 0.0], [0.3, 0.2, 0.1, 0.0, 0.4]], dtype=np.float32)
    idx, val = top_k(scores, 3)
    assert idx.tolist() == [[1, 3, 2], [4, 0, 1]]
    np.testing.assert_allclose(val, [[0.9, 0.9, 0.5], [0.4, 0.3, 0.2]])


def test_top_k_larger_than_classes_returns_all() -> None:
    idx, _ = top_k(np.array([[0.2, 0.7]]), 5)
    assert idx.tolist() == [[1, 0]]


def test_records_follow_the_contract() -> None:
    classes = make_labels(4)
    scores = np.array([[0.1, 0.8, 0.3, 0.2], [0.9, 0.1, 0.2, 0.3]], dtype=np.float32)
    data = encode_records(
        scores,
        classes=classes,
        source="bucket/a.h5",
        model="m@1",
        start_index=10,
        video_ids=["abc", None],
        start_times=np.array([30.0, np.nan]),
        options=OutputOptions(top_k=2),
    )
    lines = [orjson.loads(line) for line in data.splitlines()]
    assert data.endswith(b"\n")
    assert lines[0] == {
        "source": "bucket/a.h5",
        "index": 10,
        "video_id": "abc",
        "start_time_seconds": 30.0,
        "model": "m@1",
        "labels": [
            {"index": 1, "mid": "/m/test001", "name": "Class 1", "score": pytest.approx(0.8)},
            {"index": 2, "mid": "/m/test002", "name": "Class 2", "score": pytest.approx(0.3)},
        ],
    }
    assert lines[1]["index"] == 11 and lines[1]["video_id"] is None and lines[1]["start_time_seconds"] is None
    assert "scores" not in lines[1]


def test_full_scores_are_written_on_request() -> None:
    scores = np.array([[0.25, 0.5, 0.125]], dtype=np.float32)
    data = encode_records(
        scores, classes=make_labels(3), source="s", model="m@1", options=OutputOptions(top_k=1, full_scores=True)
    )
    assert orjson.loads(data)["scores"] == [0.25, 0.5, 0.125]


def test_score_chunk_calls_predict_once_per_chunk() -> None:
    calls = []

    def predict(x: np.ndarray) -> np.ndarray:
        calls.append(x.shape)
        return np.tile(np.linspace(0, 1, 3, dtype=np.float32), (len(x), 1))

    lines, scores = score_chunk(
        np.zeros((5, 10, 128), np.uint8), predict, classes=make_labels(3), source="s", model="m@1"
    )
    assert calls == [(5, 10, 128)]
    assert scores.shape == (5, 3)
    assert len(lines.splitlines()) == 5


def test_result_keys_map_input_key_under_prefix() -> None:
    keys = result_keys("incoming", "2024/day 1/file.h5", "predictions/")
    assert keys.jsonl == "predictions/incoming/2024/day 1/file.h5.jsonl"
    assert keys.summary == "predictions/incoming/2024/day 1/file.h5.summary.json"
    assert keys.error == "predictions/incoming/2024/day 1/file.h5.error.json"
    assert result_keys("other", "2024/day 1/file.h5", "predictions/").jsonl != keys.jsonl


@pytest.mark.parametrize("key", ["../escape.h5", "a/../../b.h5", "/abs.h5", "a//b.h5", ""])
def test_result_keys_refuse_escaping_keys(key: str) -> None:
    with pytest.raises(InvalidObjectKeyError):
        result_keys("incoming", key, "predictions/")


def test_a_file_that_compresses_far_better_than_embeddings_is_refused_after_its_first_chunk(tmp_path: Path) -> None:
    """200,000 zero clips gzip to a few hundred KB; scored, they wrote 100 MB of JSON Lines (373x)."""
    path = tmp_path / "zeros.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("x", data=np.zeros((200_000, 10, 128), np.uint8), chunks=(4096, 10, 128), compression="gzip")
    assert path.stat().st_size < 1_000_000
    calls: list[int] = []

    def predict(x: np.ndarray) -> np.ndarray:
        calls.append(len(x))
        return np.full((len(x), 4), 0.5, np.float32)

    out = io.BytesIO()
    with pytest.raises(LimitExceededError, match="AUDIOSET_MAX_OUTPUT_RATIO=20"):
        score_file(
            path,
            out,
            predict=predict,
            classes=make_labels(4),
            model="m",
            source="s",
            options=OutputOptions(top_k=2),
            chunk_clips=8192,
            max_output_ratio=20,
        )
    assert out.tell() == 0 and sum(calls) <= 2 * 8192  # refused on a projection, before writing or scoring the rest


def test_the_output_cap_passes_full_scores_of_real_sized_files_at_its_default(tmp_path: Path) -> None:
    path = write_h5(tmp_path / "real.h5", clips=4000, classes=527, seed=1)
    rng = np.random.default_rng(0)

    def predict(x: np.ndarray) -> np.ndarray:
        return rng.random((len(x), 527), dtype=np.float32)

    options = OutputOptions(top_k=5, full_scores=True)
    common = {"predict": predict, "classes": make_labels(527), "model": "m", "source": "s", "options": options}
    out = io.BytesIO()
    assert score_file(path, out, max_output_ratio=20, **common).clips == 4000  # type: ignore[arg-type]
    assert out.tell() > 16 * 1024**2  # above the floor: the ratio, not the floor, let it through
    with pytest.raises(LimitExceededError, match="AUDIOSET_MAX_OUTPUT_RATIO=1"):
        score_file(path, io.BytesIO(), max_output_ratio=1, **common)  # type: ignore[arg-type]


def test_progress_hears_of_the_clips_after_each_chunk(tmp_path: Path) -> None:
    path = write_h5(tmp_path / "p.h5", clips=25, classes=4)
    heard: list[tuple[int, int]] = []
    score_file(
        path,
        io.BytesIO(),
        predict=lambda x: np.full((len(x), 4), 0.5, dtype=np.float32),
        classes=make_labels(4),
        model="m",
        source="s",
        options=OutputOptions(top_k=2),
        chunk_clips=10,
        progress=lambda done, total: heard.append((done, total)),
    )
    assert heard == [(10, 25), (20, 25), (25, 25)]


def test_score_and_evaluate_show_a_clip_bar_with_the_time_left_on_a_terminal_and_none_with_quiet(
    tmp_path: Path, tiny_compiled: Path
) -> None:
    import fcntl
    import os
    import pty
    import struct
    import subprocess
    import sys
    import termios

    from tests.conftest import ROOT

    path = write_h5(tmp_path / "bar.h5", clips=30, classes=12)
    # the compiled form at the default precision: each command starts in a second, without TensorFlow
    model = str(tiny_compiled)
    env = {**os.environ, "AUDIOSET_MODEL_PATH": model, "AUDIOSET_READ_CHUNK_CLIPS": "10", "AUDIOSET_PRECISION": "auto"}

    def stderr_on_a_terminal(*extra: str, command: tuple[str, ...] = ()) -> str:
        leader, follower = pty.openpty()
        fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a terminal has a width
        args = command or ("score", str(path), "-o", str(tmp_path / "o.jsonl"))
        done = subprocess.run(
            [sys.executable, "-m", "cli", *args, *extra],
            env=env,
            cwd=ROOT,
            stderr=follower,
            stdout=subprocess.DEVNULL,
            timeout=300,
        )
        os.close(follower)
        chunks = []
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        os.close(leader)
        assert done.returncode == 0
        return b"".join(chunks).decode(errors="replace")

    shown = stderr_on_a_terminal()
    assert "bar.h5" in shown and "30/30" in shown and "clip/s" in shown and "<" in shown  # pace, time left
    assert "30/30" not in stderr_on_a_terminal("--quiet")
    evaluated = stderr_on_a_terminal(command=("evaluate", model, str(path)))
    assert "evaluate" in evaluated and "30/30" in evaluated  # the long evaluation shows its clips too
