"""A tiny artifact with every compiled form, built once per test process: tests that change it work on a copy."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import build_artifact


@pytest.fixture(scope="session")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Its forms carry no accuracy gate (no validation data given): ``auto`` serves them whatever the random
    weights. Its decision-level network gives the int8 form a twin with per-frame evidence."""
    from model.form_builder import add_forms

    model = build_artifact(tmp_path_factory.mktemp("compiled") / "m", name="compiled")
    add_forms(model)
    return model
