"""The fast precision modes: int8 (TFLite) and bfloat16 where they can run, float32 otherwise."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from click.testing import CliRunner

from model import inference, litert_forward
from model.architectures import ARCHITECTURES
from model.inference import PrecisionUnavailableError, Predictor, resolve_precision
from tests.helpers import build_artifact, write_h5


def test_auto_takes_int8_even_without_vnni(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(inference, "cpu_supports_bfloat16", lambda: False)
    monkeypatch.setattr(inference, "cpu_supports_int8", lambda: False)
    with caplog.at_level(logging.INFO, logger="audioset.model"):
        assert resolve_precision("auto") == "int8"  # same mAP, still 1.2-1.6x faster than float32 on AVX2
    assert "without int8 dot-product instructions" in caplog.text
    with pytest.raises(PrecisionUnavailableError, match="no bfloat16 support"):
        resolve_precision("bfloat16")
    assert resolve_precision("float32") == "float32"


def test_auto_prefers_int8_then_bfloat16(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inference, "cpu_supports_bfloat16", lambda: True)
    monkeypatch.setattr(inference, "cpu_supports_int8", lambda: True)
    assert resolve_precision("auto") == "int8"
    monkeypatch.setattr(litert_forward, "litert_available", lambda: False)
    assert resolve_precision("auto") == "bfloat16"


def test_int8_without_litert(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(litert_forward, "litert_available", lambda: False)
    monkeypatch.setattr(inference, "cpu_supports_int8", lambda: True)
    monkeypatch.setattr(inference, "cpu_supports_bfloat16", lambda: False)
    with pytest.raises(PrecisionUnavailableError, match=r"int8 needs LiteRT \(pip install ai-edge-litert\)"):
        resolve_precision("int8")
    with caplog.at_level(logging.WARNING, logger="audioset.model"):
        assert resolve_precision("auto") == "float32"
    assert "falling back to float32" in caplog.text


def test_int8_on_a_cpu_without_vnni_runs_and_says_so(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(inference, "cpu_supports_int8", lambda: False)
    with caplog.at_level(logging.WARNING, logger="audioset.model"):
        assert resolve_precision("int8") == "int8"
    assert "no int8 dot-product instructions" in caplog.text


def test_unknown_precision_is_refused() -> None:
    with pytest.raises(PrecisionUnavailableError, match="unknown precision"):
        resolve_precision("fp8")


def test_int8_gives_the_same_top_labels_at_any_batch_size(tiny_model: Path) -> None:
    x = np.random.default_rng(8).integers(0, 256, size=(64, 10, 128), dtype=np.uint8)
    full = Predictor.from_artifact(tiny_model)
    fast = Predictor.from_artifact(tiny_model, precision="int8", batch_size=24)  # 24, 24, 16: resizes
    assert fast.tag == "tiny@0+int8"
    a, b = full.predict(x), fast.predict(x)
    assert b.dtype == np.float32 and b.shape == a.shape and np.abs(a - b).max() < 0.02
    assert (a.argmax(axis=1) == b.argmax(axis=1)).mean() >= 0.95
    np.testing.assert_allclose(fast.predict(x[:5]), b[:5], rtol=1e-5, atol=1e-6)
    assert fast.predict(x[:0]).shape == (0, a.shape[1])


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_every_architecture_converts_to_int8_with_the_same_top_labels(architecture: str, tmp_path: Path) -> None:
    model = build_artifact(tmp_path / "m", architecture=architecture, hidden_units=48)
    x = np.random.default_rng(9).integers(0, 256, size=(48, 10, 128), dtype=np.uint8)
    a = Predictor.from_artifact(model).predict(x)
    b = Predictor.from_artifact(model, precision="int8").predict(x)
    assert b.shape == a.shape and np.abs(a - b).max() < 0.02
    assert (a.argmax(axis=1) == b.argmax(axis=1)).mean() >= 0.9


def test_score_cli_records_int8_in_results(tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from audioset_batch.settings import get_settings
    from cli import main

    monkeypatch.setenv("AUDIOSET_MODEL_PATH", str(tiny_model))
    get_settings.cache_clear()
    path = write_h5(tmp_path / "a.h5", clips=3)
    result = CliRunner().invoke(main, ["score", str(path), "-o", str(tmp_path / "o.jsonl"), "--precision", "int8"])
    get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    assert orjson.loads((tmp_path / "o.jsonl").read_bytes().splitlines()[0])["model"] == "tiny@0+int8"


@pytest.fixture
def bf16_cpu() -> None:
    if not inference.cpu_supports_bfloat16():
        pytest.skip("this CPU has no bfloat16 support; the fallback test above covers it")


def test_bfloat16_gives_the_same_top_labels(bf16_cpu: None, tiny_model: Path) -> None:
    x = np.random.default_rng(7).integers(0, 256, size=(64, 10, 128), dtype=np.uint8)
    full = Predictor.from_artifact(tiny_model)
    fast = Predictor.from_artifact(tiny_model, precision="bfloat16")
    assert fast.tag == "tiny@0+bfloat16" and full.tag == "tiny@0"
    a, b = full.predict(x), fast.predict(x)
    assert b.dtype == np.float32 and np.abs(a - b).max() < 0.02
    assert (a.argmax(axis=1) == b.argmax(axis=1)).mean() >= 0.95


def test_score_cli_records_the_precision_in_results(
    bf16_cpu: None, tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from audioset_batch.settings import get_settings
    from cli import main

    monkeypatch.setenv("AUDIOSET_MODEL_PATH", str(tiny_model))
    get_settings.cache_clear()
    path = write_h5(tmp_path / "a.h5", clips=3)
    result = CliRunner().invoke(main, ["score", str(path), "-o", str(tmp_path / "o.jsonl"), "--precision", "bfloat16"])
    get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    assert orjson.loads((tmp_path / "o.jsonl").read_bytes().splitlines()[0])["model"] == "tiny@0+bfloat16"


def test_int8_results_on_stdout_are_clean_json_lines(
    tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The int8 conversion exports a SavedModel and prints its signature; none of that may reach stdout."""
    from audioset_batch.settings import get_settings
    from cli import main

    monkeypatch.setenv("AUDIOSET_MODEL_PATH", str(tiny_model))
    get_settings.cache_clear()
    path = write_h5(tmp_path / "a.h5", clips=3)
    result = CliRunner().invoke(main, ["score", str(path), "--precision", "int8"])
    get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 3 and all(orjson.loads(line)["model"] == "tiny@0+int8" for line in lines)


def test_many_predictors_in_one_process_do_not_warn_of_retracing(tiny_model: Path) -> None:
    """Each Predictor traces once; TensorFlow must not lump them together as one function retracing."""
    seen: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    handler = Collect()
    logging.getLogger("tensorflow").addHandler(handler)
    try:
        x = np.random.default_rng(0).integers(0, 256, (70, 10, 128), dtype=np.uint8)
        first = Predictor.from_artifact(tiny_model, batch_size=32).predict(x)
        for batch_size in (32, 16, 64, 8, 50, 70, 32, 16):
            np.testing.assert_allclose(
                Predictor.from_artifact(tiny_model, batch_size=batch_size).predict(x), first, atol=1e-6
            )
    finally:
        logging.getLogger("tensorflow").removeHandler(handler)
    assert not [message for message in seen if "retracing" in message]


def test_bfloat16_reaches_the_layers_of_every_member_of_an_ensemble(tmp_path: Path) -> None:
    """An ensemble's members are nested models: bfloat16 once reached only the top level, so the members (all
    the arithmetic) computed in float32 and --precision bfloat16 ran at float32's speed."""
    from model.artifact import load
    from model.ensemble import combine
    from model.inference import dequantize, with_precision
    from tests.helpers import build_artifact

    members = [load(build_artifact(tmp_path / f"m{i}", seed=i))[0] for i in range(2)]
    ensemble = combine(members)
    fast = with_precision(ensemble, "bfloat16")

    def dense_policies(model: Any) -> list[str]:
        found = []
        for layer in model.layers:
            if hasattr(layer, "layers"):
                found += dense_policies(layer)
            elif hasattr(layer, "kernel"):
                found.append(layer.dtype_policy.name)
        return found

    policies = dense_policies(fast)
    assert len(policies) >= 4 and set(policies) == {"mixed_bfloat16"}
    assert set(dense_policies(ensemble)) == {"float32"}  # the served float32 model is untouched
    x = np.random.default_rng(0).integers(0, 256, size=(6, 10, 128), dtype=np.uint8)
    close = np.asarray(fast(dequantize(x)), dtype=np.float32) - np.asarray(ensemble(dequantize(x)))
    assert np.abs(close).max() < 0.05  # the same model, in a coarser arithmetic
