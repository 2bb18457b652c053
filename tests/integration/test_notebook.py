"""CI executes the exploration notebook on a small generated result set."""

from __future__ import annotations

import json
import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from audioset_batch.scoring.clip_records import OutputOptions
from audioset_batch.scoring.pipeline import score_file
from model.inference import Predictor
from tests.conftest import ROOT
from tests.helpers import write_h5


def test_notebook_runs_on_generated_results(tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    predictor = Predictor.from_artifact(tiny_model)
    results = tmp_path / "results" / "predictions"
    results.mkdir(parents=True)
    for n in range(2):
        source = write_h5(tmp_path / f"in{n}.h5", clips=5, classes=12, seed=n)
        with (results / f"in{n}.h5.jsonl").open("wb") as out:
            scored = score_file(
                source,
                out,
                predict=predictor.predict,
                classes=predictor.manifest.classes,
                model=predictor.manifest.tag,
                source=f"incoming/in{n}.h5",
                options=OutputOptions(),
            )
        assert scored.metrics is not None
        summary = {"source": f"incoming/in{n}.h5", "metrics": {"mAP": scored.metrics["mAP"]}}
        (results / f"in{n}.h5.summary.json").write_text(json.dumps(summary))
    for name in [n for n in os.environ if n.startswith("AUDIOSET_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("AUDIOSET_LOCAL_ROOT", str(tmp_path))
    monkeypatch.setenv("AUDIOSET_MODEL_PATH", str(tiny_model))
    monkeypatch.delenv("MPLBACKEND", raising=False)  # as in Jupyter: the notebook picks the inline backend
    # No AUDIOSET_NOTEBOOK_RESULTS: the default is the configured results bucket and prefix under the local root.
    notebook = nbformat.read(ROOT / "notebooks" / "explore_results.ipynb", as_version=4)
    # Jupyter runs the kernel in the notebook's folder, as `jupyter lab notebooks/` (the README's command) does.
    resources = {"metadata": {"path": str(ROOT / "notebooks")}}
    NotebookClient(notebook, timeout=300, kernel_name="python3", resources=resources).execute()
    outputs = [out for cell in notebook.cells if cell.cell_type == "code" for out in cell.get("outputs", [])]
    text = "".join(out.get("text", "") for out in outputs)
    assert "10 clips in 2 files" in text
    assert "best clips for Class" in text and "in0.h5.jsonl" in text
    assert "2 file(s) with labels" in text
    images = [out for out in outputs if "image/png" in out.get("data", {})]
    assert len(images) == 2, "the label distribution and the per-file mAP are drawn inline"
