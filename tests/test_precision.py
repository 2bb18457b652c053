"""The fast precision mode: bfloat16 where the CPU supports it, float32 otherwise."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import orjson
import pytest
from click.testing import CliRunner

from model import inference
from model.inference import PrecisionUnavailableError, Predictor, resolve_precision
from tests.helpers import write_h5


def test_fallback_to_float32_without_cpu_support(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(inference, "cpu_supports_bfloat16", lambda: False)
    with caplog.at_level(logging.WARNING, logger="audioset.model"):
        assert resolve_precision("auto") == "float32"
    assert "falling back to float32" in caplog.text
    with pytest.raises(PrecisionUnavailableError, match="no bfloat16 support"):
        resolve_precision("bfloat16")
    assert resolve_precision("float32") == "float32"


def test_auto_picks_bfloat16_with_cpu_support(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inference, "cpu_supports_bfloat16", lambda: True)
    assert resolve_precision("auto") == "bfloat16"


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
    from audioset_batch.cli import main
    from audioset_batch.settings import get_settings

    monkeypatch.setenv("AUDIOSET_MODEL_PATH", str(tiny_model))
    get_settings.cache_clear()
    path = write_h5(tmp_path / "a.h5", clips=3)
    result = CliRunner().invoke(main, ["score", str(path), "-o", str(tmp_path / "o.jsonl"), "--precision", "bfloat16"])
    get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    assert orjson.loads((tmp_path / "o.jsonl").read_bytes().splitlines()[0])["model"] == "tiny@0+bfloat16"
