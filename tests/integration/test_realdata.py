"""Opt-in checks on the real AudioSet balanced set (AUDIOSET_DATA_DIR; .ci/run sets it)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest

from audioset_batch.settings import DEFAULT_MODEL_PATH
from model import artifact
from model.ensemble import trained_parts
from model.inference import Predictor
from model.labels import load_labels
from model.metrics import evaluate
from model.training import data_fingerprint
from tests.helpers import auto_serves

pytestmark = pytest.mark.realdata

MODEL_CARD = Path(__file__).resolve().parents[2] / "docs" / "model-card.md"


def data_dir() -> Path:
    return Path(os.environ["AUDIOSET_DATA_DIR"])


def test_every_part_of_the_shipped_model_was_trained_on_bal_train_only(
    eval_half: tuple[np.ndarray, np.ndarray],
) -> None:
    manifest = artifact.verify(DEFAULT_MODEL_PATH)
    with h5py.File(data_dir() / "bal_train.h5", "r") as f:
        bal_train = data_fingerprint(f["x"][:], f["y"][:])
    eval_clips = data_fingerprint(*eval_half)
    for part in trained_parts(manifest):
        trained_on, _, validated_on = part.training["data_fingerprint"].partition("+")
        assert trained_on == bal_train, "not the data the model was trained on"
        assert validated_on in ("", eval_clips), "selected on something other than a bal_train split or eval_half"


def test_shipped_classes_are_the_audioset_release() -> None:
    manifest = artifact.read_manifest(DEFAULT_MODEL_PATH)
    release = load_labels(data_dir() / "class_labels_indices.csv")
    assert manifest.classes == release


def test_demo_sample_uses_real_clips(tmp_path: Path) -> None:
    from cli.demo import write_sample

    origin = write_sample(tmp_path / "s.h5", clips=4)
    assert "real clips" in origin
    with h5py.File(tmp_path / "s.h5", "r") as f:
        assert f["x"].shape == (4, 10, 128) and f["y"].shape == (4, 527)
        assert np.asarray(f["y"]).any()


@pytest.fixture(scope="module")
def eval_half() -> tuple[np.ndarray, np.ndarray]:
    with h5py.File(data_dir() / "eval_half.h5", "r") as f:
        return f["x"][:], f["y"][:].astype(bool)


@pytest.fixture(scope="module")
def float32_map(eval_half: tuple[np.ndarray, np.ndarray]) -> float:
    """The shipped model's eval_half mAP in float32, which each precision is held against."""
    x, y = eval_half
    return evaluate(y, Predictor.from_artifact(DEFAULT_MODEL_PATH).predict(x)).mean_average_precision


def test_bfloat16_map_within_0_001_of_float32(eval_half: tuple[np.ndarray, np.ndarray], float32_map: float) -> None:
    from model.inference import cpu_supports_bfloat16

    if not cpu_supports_bfloat16():
        pytest.skip("no bfloat16 support on this CPU")
    x, y = eval_half
    fast = evaluate(y, Predictor.from_artifact(DEFAULT_MODEL_PATH, precision="bfloat16").predict(x))
    assert abs(float32_map - fast.mean_average_precision) < 0.001
    card = MODEL_CARD.read_text(encoding="utf-8")
    assert "+bfloat16" in card, "the model card must quote the bfloat16 eval_half mAP"


def test_every_other_compiled_form_as_this_cpu_runs_it_is_within_0_001_of_float32(
    eval_half: tuple[np.ndarray, np.ndarray], float32_map: float
) -> None:
    """Each form `auto` does not pick here, run by its own runtime: OpenVINO computes the bfloat16 form in
    bfloat16 on a CPU that has it and in float32 elsewhere (then its float16 weights are what is checked)."""
    from model.compiled_forms import FORM_RUNTIMES
    from model.served_forms import compiled_forward

    x, y = eval_half
    manifest = artifact.read_manifest(DEFAULT_MODEL_PATH)
    others = sorted(set(manifest.compiled) - {auto_serves()[0]})
    assert others, "the shipped model must carry a compiled form for each runtime"
    for precision in others:
        forward, _ = compiled_forward(DEFAULT_MODEL_PATH, manifest, precision, None)
        runtime = FORM_RUNTIMES[precision]
        served = Predictor(forward, manifest, frames=10, batch_size=1024, precision=precision, runtime=runtime)
        measured = evaluate(y, served.predict(x)).mean_average_precision
        assert abs(float32_map - measured) < 0.001, (precision, measured, float32_map)


def test_shipped_model_on_real_eval_clips_at_the_default_precision(
    eval_half: tuple[np.ndarray, np.ndarray], float32_map: float
) -> None:
    """The manifest's and the model card's eval_half figures, recomputed: float32, and the compiled form `auto`
    picks on this CPU (int8, or bfloat16 with AMX) within 0.001 of it, as the form's gate in the manifest says."""
    x, y = eval_half
    manifest = artifact.read_manifest(DEFAULT_MODEL_PATH)
    assert manifest.training["validation_data"].endswith("eval_half.h5")
    assert float32_map == pytest.approx(manifest.metrics["validation"]["mAP"], abs=1e-4)
    assert float32_map >= 0.320, "the shipped model must reach the 0.320 eval_half mAP it is documented to reach"
    served = Predictor.from_artifact(DEFAULT_MODEL_PATH, precision="auto")
    assert (served.precision, served.runtime) == auto_serves()  # what this CPU serves is what is checked
    fast = evaluate(y, served.predict(x)).mean_average_precision
    assert abs(float32_map - fast) < 0.001
    gate = manifest.compiled[served.precision]["gate"]
    assert gate["passed"] and gate["data"].startswith("eval_half.h5") and gate["clips"] == len(x)
    assert (gate["map"], gate["float32_map"]) == (pytest.approx(fast, abs=1e-4), pytest.approx(float32_map, abs=1e-4))
    card = MODEL_CARD.read_text(encoding="utf-8")
    assert f"**{float32_map:.4f}**" in card, "the model card must quote the shipped model's eval_half mAP"
    assert "+int8" in card, "the model card must quote the int8 eval_half mAP"


def test_real_clips_joined_into_a_recording_score_as_clips_with_aligned_windows_and_events_find_them(
    eval_half: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    """The model card's recordings figures, on 720 eval clips: two hour-long recordings of real clips."""
    import io

    import orjson

    from audioset_batch.scoring.clip_records import OutputOptions
    from audioset_batch.scoring.pipeline import ObjectScorer
    from audioset_batch.settings import load_settings
    from benchmarks.event_edges import time_quality
    from benchmarks.recordings import event_quality

    x, y = eval_half[0][:720], eval_half[1][:720]
    clips, joined = tmp_path / "clips.h5", tmp_path / "joined.h5"
    with h5py.File(clips, "w") as f:
        f["x"] = x
    with h5py.File(joined, "w") as f:
        f["x"] = x.reshape(2, 3600, 128)
        f["x"].attrs["seconds_per_frame"] = 1.0
    scorer = ObjectScorer.from_settings(load_settings(), full_scores=True)

    def scores(path: Path, hop: int) -> tuple[np.ndarray, list[dict[str, Any]]]:
        out, events = io.BytesIO(), io.BytesIO()
        scorer.options = OutputOptions(top_k=5, full_scores=True, window_hop=hop, seconds_per_frame=1.0)
        scorer.score_local(path, out, "eval", events_out=events)
        rows = [orjson.loads(line)["scores"] for line in out.getvalue().splitlines()]
        return np.asarray(rows, dtype=np.float32), [orjson.loads(line) for line in events.getvalue().splitlines()]

    as_clips, _ = scores(clips, 10)
    aligned, _ = scores(joined, 10)
    assert aligned.shape == as_clips.shape and np.abs(aligned - as_clips).max() < 1e-5
    assert evaluate(y, aligned).mean_average_precision == pytest.approx(evaluate(y, as_clips).mean_average_precision)
    _, events = scores(joined, 5)
    quality = event_quality(events, y, 360)  # the benchmark's rule: an event overlaps a clip carrying its class
    assert quality["events"] > 300 and quality["precision"] > 0.4 and quality["recall"] > 0.4, quality

    # Edges on frames (served) place events better in time than edges on window spans (model card).
    def spans(found: list[dict[str, Any]]) -> list[tuple[int, int, float, float]]:
        return [(e["index"], e["class"]["index"], e["start_seconds"], e["end_seconds"]) for e in found]

    assert scorer.event_edges == "frames"
    with_frames = scorer.predict_frames
    scorer.predict_frames = None
    _, by_windows = scores(joined, 5)
    scorer.predict_frames = with_frames
    framed, windowed = time_quality(spans(events), y, 360), time_quality(spans(by_windows), y, 360)
    assert len(by_windows) == len(events) and framed["f1"] > windowed["f1"] + 0.01, (framed, windowed)
