"""The bfloat16 form: float16 weights that OpenVINO computes in bfloat16, served by ``auto`` on CPUs with AMX,
checked like every other form. On a CPU without bfloat16 arithmetic OpenVINO computes the same graph in float32:
these tests pin the wiring (what is loaded, by what, refused when), the real-data test pins bfloat16's accuracy."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from model import inference
from model.artifact import MANIFEST_NAME, read_manifest
from model.artifact_errors import ArtifactError, ArtifactIntegrityError, UnsafeArtifactError
from model.compiled_forms import FORM_FILES, read_form
from model.inference import Predictor
from model.openvino_forward import PART_CLIPS, OpenVINOForward
from tests.helpers import build_artifact, flip_a_byte, write_h5

ROOT = Path(__file__).resolve().parents[2]
X = np.random.default_rng(5).integers(0, 256, size=(40, 10, 128), dtype=np.uint8)


@pytest.fixture
def bfloat16_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """This CPU taken for one with AMX: ``auto`` and an explicit ``bfloat16`` reach the OpenVINO form."""
    monkeypatch.setattr(inference, "cpu_supports_bfloat16", lambda: True)
    monkeypatch.setattr(inference, "cpu_has_amx", lambda: True)


def test_the_bfloat16_form_is_float16_weights_for_openvino(compiled: Path) -> None:
    forms = read_manifest(compiled).compiled
    form = forms["bfloat16"]
    assert form["file"] == "model.float16.tflite" and form["runtime"] == "OpenVINO"
    assert form["bytes"] == (compiled / form["file"]).stat().st_size and "float16 weights" in form["made_by"]
    assert forms["int8"]["bytes"] < form["bytes"]  # int8 weights are half the size of float16 ones
    assert "frames" not in form  # recordings take their per-frame evidence from the int8 form's twin


def test_bfloat16_is_served_by_openvino_with_float32_s_top_labels(compiled: Path, bfloat16_cpu: None) -> None:
    served = Predictor.from_artifact(compiled, precision="bfloat16", batch_size=16)  # 16, 16, 8: one model
    reference = Predictor.from_artifact(compiled, precision="float32")
    assert (served.runtime, served.model, served.tag) == ("OpenVINO", None, "compiled@0+bfloat16")
    a, b = reference.predict(X), served.predict(X)
    assert b.dtype == np.float32 and b.shape == a.shape and np.abs(a - b).max() < 0.02
    assert (a.argmax(axis=1) == b.argmax(axis=1)).mean() >= 0.95
    assert served.predict(X[:0]).shape == (0, 12)
    int8 = Predictor.from_artifact(compiled, precision="int8")
    assert served.frame_evidence == int8.frame_evidence  # a recording's frames come from the int8 twin either way


def test_auto_picks_the_openvino_form_only_on_a_cpu_with_amx(
    compiled: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(inference, "cpu_has_amx", lambda: True)
    with caplog.at_level(logging.INFO, logger="audioset.model"):
        assert Predictor.from_artifact(compiled, precision="auto").runtime == "OpenVINO"
    assert "bfloat16, the compiled form in OpenVINO on AMX" in caplog.text
    model = Path(shutil.copytree(compiled, tmp_path / "failed"))
    data = json.loads((model / MANIFEST_NAME).read_text())
    data["compiled"]["bfloat16"]["gate"] = {"data": "eval", "map": 0.21, "float32_map": 0.32, "passed": False}
    (model / MANIFEST_NAME).write_text(json.dumps(data))
    assert Predictor.from_artifact(model, precision="auto").precision == "int8"  # a failed gate is passed over
    monkeypatch.setattr(inference, "cpu_has_amx", lambda: False)
    assert Predictor.from_artifact(compiled, precision="auto").runtime == "LiteRT"  # int8 is faster without AMX


def test_a_modified_or_symlinked_bfloat16_form_is_refused(compiled: Path, tmp_path: Path, bfloat16_cpu: None) -> None:
    model = Path(shutil.copytree(compiled, tmp_path / "copy"))
    path = model / FORM_FILES["bfloat16"]
    flip_a_byte(path)
    with pytest.raises(ArtifactIntegrityError, match="does not match the manifest's"):
        Predictor.from_artifact(model, precision="bfloat16")
    path.unlink()
    path.symlink_to(compiled / FORM_FILES["bfloat16"])
    with pytest.raises(UnsafeArtifactError, match="is a symlink"):
        Predictor.from_artifact(model, precision="bfloat16")


def test_a_form_of_another_shape_or_one_openvino_cannot_read_is_an_artifact_error(compiled: Path) -> None:
    blob = read_form(compiled, read_manifest(compiled).compiled["bfloat16"])
    with pytest.raises(ArtifactError, match=r"x\.tflite: the compiled model takes \[\[-1, 10, 128\]\]"):
        OpenVINOForward(blob, frames=20, classes=12, where="x.tflite")
    with pytest.raises(ArtifactError, match=r"y\.tflite: OpenVINO cannot load it"):
        OpenVINOForward(blob[: len(blob) // 2], frames=10, classes=12, where="y.tflite")


def test_a_batch_cut_into_parts_across_streams_gives_each_clip_its_own_row(compiled: Path) -> None:
    blob = read_form(compiled, read_manifest(compiled).compiled["bfloat16"])
    x = np.random.default_rng(6).uniform(-1, 1, size=(2 * PART_CLIPS + 3, 10, 128)).astype(np.float32)
    two_streams, one_stream = OpenVINOForward(blob, 10, 12, threads=2), OpenVINOForward(blob, 10, 12, threads=1)
    whole = two_streams(x)  # three parts over two streams, the last of 3 clips
    assert whole.shape == (len(x), 12)
    rows = np.concatenate([one_stream(x[i : i + 1]) for i in (0, PART_CLIPS, 2 * PART_CLIPS + 2)])
    assert np.allclose(whole[[0, PART_CLIPS, 2 * PART_CLIPS + 2]], rows, atol=1e-6)  # each row is its own clip's
    assert np.array_equal(two_streams(x[:5]), whole[:5]) and two_streams(x[:0]).shape == (0, 12)


def test_uint8_codes_are_dequantised_inside_the_graph_as_the_predictor_would(compiled: Path) -> None:
    forward = OpenVINOForward(read_form(compiled, read_manifest(compiled).compiled["bfloat16"]), 10, 12)
    codes = np.random.default_rng(7).integers(0, 256, size=(PART_CLIPS + 9, 10, 128), dtype=np.uint8)
    in_graph, outside = forward(codes), forward(inference.dequantize(codes))  # the float twin compiles on first use
    assert in_graph.shape == (len(codes), 12) and not np.array_equal(in_graph[0], in_graph[1])
    assert np.allclose(in_graph, outside, atol=1e-6)
    assert np.array_equal(forward(codes[: PART_CLIPS + 1]), in_graph[: PART_CLIPS + 1])  # requests reused, rows kept


def test_the_predictor_hands_openvino_uint8_in_calls_bigger_than_its_batch(
    compiled: Path, bfloat16_cpu: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[np.dtype[Any], int]] = []
    original = OpenVINOForward.__call__

    def spy(self: OpenVINOForward, batch: np.ndarray) -> np.ndarray:
        calls.append((batch.dtype, len(batch)))
        return original(self, batch)

    monkeypatch.setattr(OpenVINOForward, "__call__", spy)
    served = Predictor.from_artifact(compiled, precision="bfloat16", batch_size=16)
    codes = np.random.default_rng(8).integers(0, 256, size=(3 * PART_CLIPS, 10, 128), dtype=np.uint8)
    scores = served.predict(codes)
    assert calls == [(np.dtype(np.uint8), 3 * PART_CLIPS)]  # one call, not 48 of 16 clips each dequantised here
    reference = Predictor.from_artifact(compiled, precision="bfloat16", batch_size=16)
    assert np.allclose(scores, reference.predict(inference.dequantize(codes)), atol=1e-6)
    assert calls[1:] == [(np.dtype(np.float32), 3 * PART_CLIPS)]  # float embeddings take the float32-input twin


def test_the_compile_gate_says_what_openvino_computed_in(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from cli import main

    model = build_artifact(tmp_path / "m", name="gated")
    data = write_h5(tmp_path / "held-out.h5", clips=30, classes=12)
    result = CliRunner().invoke(main, ["compile", str(model), str(data)])
    assert result.exit_code == 0, result.output
    gate = read_manifest(model).compiled["bfloat16"]["gate"]
    assert gate["clips"] == 30 and gate["passed"] == (gate["map"] >= gate["float32_map"] - 0.001)
    computed = OpenVINOForward(read_form(model, read_manifest(model).compiled["bfloat16"]), 10, 12).computes_in
    assert gate.get("computed_in", "bfloat16") == computed  # float32 on a CPU without bfloat16: said, not hidden
    assert computed == ("bfloat16" if inference.cpu_supports_bfloat16() else "float32")  # what this CPU can do
    assert "bfloat16: model.float16.tflite" in result.output and "run by OpenVINO" in result.output
