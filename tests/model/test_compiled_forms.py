"""Compiled serving forms: made once, pinned in the manifest, gated on accuracy, served by LiteRT without
TensorFlow, and refused when tampered with."""

from __future__ import annotations

import json
import logging
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson
import pytest
from click.testing import CliRunner

from model import inference
from model.artifact import MANIFEST_NAME, read_manifest
from model.artifact_errors import ArtifactError, ArtifactIntegrityError, UnsafeArtifactError
from model.compiled_forms import FORM_FILES, _field, _u32, check_flatbuffer
from model.inference import Predictor
from tests.helpers import auto_serves, build_artifact, flip_a_byte, write_h5

ROOT = Path(__file__).resolve().parents[2]
X = np.random.default_rng(3).integers(0, 256, size=(40, 10, 128), dtype=np.uint8)


def copy_of(model: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(model, tmp_path / "copy"))


def rewrite_manifest(model: Path, **changes: object) -> None:
    path = model / MANIFEST_NAME
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def pin(model: Path) -> None:
    """Point the manifest at the int8 form's current bytes: a hostile artifact whose manifest matches."""
    import hashlib

    blob = (model / FORM_FILES["int8"]).read_bytes()
    data = json.loads((model / MANIFEST_NAME).read_text())
    data["compiled"]["int8"].update(sha256=hashlib.sha256(blob).hexdigest(), bytes=len(blob))
    (model / MANIFEST_NAME).write_text(json.dumps(data))


def test_the_form_is_listed_with_its_hash_size_and_maker(compiled: Path) -> None:
    manifest = read_manifest(compiled)
    form = manifest.compiled["int8"]
    assert form["file"] == "model.int8.tflite" and form["bytes"] == (compiled / form["file"]).stat().st_size
    assert len(form["sha256"]) == 64 and form["made_by"].startswith("TensorFlow ") and form["runtime"] == "LiteRT"
    assert "gate" not in form  # no validation data given: nothing measured, nothing claimed
    assert json.loads((compiled / MANIFEST_NAME).read_text())["format_version"] == 2


def test_int8_is_served_from_the_form_by_litert_with_float32_s_top_labels(compiled: Path) -> None:
    fast = Predictor.from_artifact(compiled, precision="int8", batch_size=16)  # 16, 16, 8: resizes
    reference = Predictor.from_artifact(compiled, precision="float32")
    assert (fast.runtime, fast.model, fast.tag) == ("LiteRT", None, "compiled@0+int8")
    assert reference.runtime == "TensorFlow" and reference.tag == "compiled@0"
    a, b = reference.predict(X), fast.predict(X)
    assert b.dtype == np.float32 and b.shape == a.shape and np.abs(a - b).max() < 0.02
    assert (a.argmax(axis=1) == b.argmax(axis=1)).mean() >= 0.95
    assert fast.predict(X[:0]).shape == (0, 12)


@pytest.mark.parametrize(("amx", "served"), [(False, "int8"), (True, "bfloat16")])
def test_scoring_with_a_compiled_form_never_imports_tensorflow(
    compiled: Path, tmp_path: Path, amx: bool, served: str
) -> None:
    """The worker child and `audioset score` load the form without TensorFlow, Keras or scikit-learn: the int8
    form in LiteRT, and on a CPU with AMX (here: this CPU taken for one) the bfloat16 form in OpenVINO."""
    data = write_h5(tmp_path / "a.h5", clips=5)
    program = (
        "import sys\n"
        "from model import inference\n"
        f"inference.cpu_has_amx = lambda: {amx}\n"
        "from cli import main\n"
        f"main(['score', {str(data)!r}, '-o', {str(tmp_path / 'a.jsonl')!r}], standalone_mode=False)\n"
        "print(sorted(m for m in ('tensorflow', 'keras', 'sklearn') if m in sys.modules))\n"
    )
    env = {"PATH": "/usr/bin:/bin", "AUDIOSET_MODEL_PATH": str(compiled), "AUDIOSET_PRECISION": "auto"}
    done = subprocess.run([sys.executable, "-c", program], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"
    lines = (tmp_path / "a.jsonl").read_bytes().splitlines()
    assert len(lines) == 5 and orjson.loads(lines[0])["model"] == f"compiled@0+{served}"


def test_an_artifact_without_the_form_converts_at_load_and_says_how_to_add_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model = build_artifact(tmp_path / "old", name="old")
    with caplog.at_level(logging.WARNING, logger="audioset.model"):
        first = Predictor.from_artifact(model, precision="int8")
        Predictor.from_artifact(model, precision="int8")
    assert first.runtime == "LiteRT (converted at load)" and first.model is not None
    assert caplog.text.count("no compiled int8 form") == 1  # said once per process
    assert f"`audioset compile {model}` adds it once" in caplog.text


def test_a_form_that_failed_its_gate_is_never_picked_by_auto(
    compiled: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    model = copy_of(compiled, tmp_path)
    data = json.loads((model / MANIFEST_NAME).read_text())
    data["compiled"]["int8"]["gate"] = {"data": "eval", "map": 0.219, "float32_map": 0.322, "passed": False}
    (model / MANIFEST_NAME).write_text(json.dumps(data))
    monkeypatch.setattr(inference, "cpu_supports_bfloat16", lambda: False)
    monkeypatch.setattr(inference, "cpu_has_amx", lambda: False)  # else auto serves the bfloat16 form (AMX hosts)
    with caplog.at_level(logging.INFO, logger="audioset.model"):
        assert Predictor.from_artifact(model, precision="auto").precision == "float32"
        assert "failed its accuracy gate (mAP 0.219 against float32's 0.322" in caplog.text
        assert Predictor.from_artifact(model, precision="int8").runtime == "LiteRT"  # asked for: served, with a warning
    assert "served as asked" in caplog.text


def test_a_modified_form_is_refused(compiled: Path, tmp_path: Path) -> None:
    model = copy_of(compiled, tmp_path)
    flip_a_byte(model / "model.int8.tflite")
    with pytest.raises(ArtifactIntegrityError, match="does not match the manifest's"):
        Predictor.from_artifact(model, precision="int8")
    (model / "model.int8.tflite").unlink()
    with pytest.raises(ArtifactError, match=r"lists model\.int8\.tflite but the file is missing"):
        Predictor.from_artifact(model, precision="int8")
    (model / "model.int8.tflite").symlink_to(compiled / "model.int8.tflite")
    with pytest.raises(UnsafeArtifactError, match="is a symlink"):
        Predictor.from_artifact(model, precision="int8")


def test_a_custom_operator_is_refused_even_with_a_matching_manifest(compiled: Path, tmp_path: Path) -> None:
    """Custom and Flex operators run code from outside LiteRT's builtin kernels: never loaded."""
    model = copy_of(compiled, tmp_path)
    path = model / "model.int8.tflite"
    blob = bytearray(path.read_bytes())
    codes = _field(bytes(blob), _u32(bytes(blob), 0), 1, follow=True)
    assert codes is not None
    first = codes + 4 + _u32(bytes(blob), codes + 4)
    for field in (0, 3):  # deprecated_builtin_code (int8) and builtin_code (int32) of the first operator
        at = _field(bytes(blob), first, field)
        if at is not None:
            struct.pack_into("<b" if field == 0 else "<i", blob, at, 32)  # CUSTOM
    path.write_bytes(bytes(blob))
    pin(model)
    with pytest.raises(UnsafeArtifactError, match="only LiteRT's builtin operators are loaded"):
        Predictor.from_artifact(model, precision="int8")


@pytest.mark.parametrize("blob", [b"", b"TFL3", b"\x00" * 64, b"\x10\x00\x00\x00TFL3" + b"\xff" * 40])
def test_a_file_that_is_not_a_flatbuffer_is_an_artifact_error(blob: bytes) -> None:
    with pytest.raises(ArtifactError, match="not a TFLite flatbuffer"):
        check_flatbuffer(blob, "x.tflite")


def test_a_manifest_cannot_point_a_form_at_another_file(compiled: Path, tmp_path: Path) -> None:
    model = copy_of(compiled, tmp_path)
    form = read_manifest(model).compiled["int8"]
    for compiled_section, message in (
        ({"int8": {**form, "file": "../model.int8.tflite"}}, "must be the file 'model.int8.tflite'"),
        ({"fp8": form}, "unknown compiled form 'fp8'"),
        ({"int8": {**form, "bytes": 2 * 1024**3}}, "needs a sha256 and a size"),
        (["int8"], "'compiled' must map a precision to its form"),
    ):
        rewrite_manifest(model, compiled=compiled_section)
        with pytest.raises(ArtifactError, match=message):
            read_manifest(model)


def test_compile_command_adds_the_form_and_its_accuracy_gate(tmp_path: Path) -> None:
    from cli import main

    model = build_artifact(tmp_path / "m", name="later")
    data = write_h5(tmp_path / "held-out.h5", clips=30, classes=12)
    result = CliRunner().invoke(main, ["compile", str(model), str(data), "--json"])
    assert result.exit_code == 0, result.output
    reported = json.loads(result.stdout)["compiled"]["int8"]
    gate = reported["gate"]
    assert reported == read_manifest(model).compiled["int8"]
    assert gate["data"].startswith("held-out.h5") and gate["clips"] == 30 and gate["tolerance"] == 0.001
    assert gate["passed"] == (gate["map"] >= gate["float32_map"] - 0.001)
    assert Predictor.from_artifact(model, precision="int8").runtime == "LiteRT"
    missing = CliRunner().invoke(main, ["compile", str(tmp_path / "nowhere")])
    assert missing.exit_code != 0 and "Traceback" not in missing.output


def test_a_serving_only_install_scores_from_the_form_and_says_what_needs_tensorflow(
    compiled: Path, tmp_path: Path
) -> None:
    """Without TensorFlow and Keras installed (here: made unimportable), a labelled file is scored from the
    compiled form, its summary metrics included; float32 is one line saying what to install."""
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('tensorflow', 'keras'):\n"
        "            raise ImportError(f'No module named {name!r}')\n"
        "sys.meta_path.insert(0, Block())\n"
    )
    data = write_h5(tmp_path / "labelled.h5", clips=6, classes=12)
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(blocker), "AUDIOSET_MODEL_PATH": str(compiled)}
    command = [sys.executable, "-m", "cli", "score", str(data), "-o", str(tmp_path / "out.jsonl")]
    served = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    assert served.returncode == 0, served.stderr
    summary = orjson.loads(served.stderr.splitlines()[-1])  # the summary line goes to stderr beside -o FILE
    assert (
        summary["model"] == f"compiled@0+{auto_serves()[0]}" and summary["clips"] == 6 and summary["metrics"]["mAP"] > 0
    )
    refused = subprocess.run([*command, "--precision", "float32"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr
    assert "TensorFlowUnavailableError" in refused.stderr and "pip install 'tensorflow-cpu" in refused.stderr


def test_the_compiled_path_refuses_a_symlinked_manifest(compiled: Path, tmp_path: Path) -> None:
    """Serving from the form reads only the manifest and the form: the manifest is symlink-checked there too."""
    model = copy_of(compiled, tmp_path)
    outside = tmp_path / "elsewhere.json"
    (model / MANIFEST_NAME).rename(outside)
    (model / MANIFEST_NAME).symlink_to(outside)
    with pytest.raises(UnsafeArtifactError, match="is a symlink"):
        Predictor.from_artifact(model, precision="int8")
