"""Importing a module has no side effects: it reads no settings, builds no Celery app, connects to nothing."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib

import grimp

from tests.conftest import ROOT

PROBE = """
import importlib, pkgutil, socket, sys

def refuse(*args, **kwargs):
    raise AssertionError(f"network access while importing: {args}")

socket.socket.connect = refuse  # any connection attempt fails the probe
socket.create_connection = refuse
names = ["celeryconfig", "benchmarks.__main__"]
for package in ("cli", "audioset_batch", "worker", "producers", "model", "benchmarks"):
    module = importlib.import_module(package)
    names += [info.name for info in pkgutil.walk_packages(module.__path__, package + ".")]
for name in names:
    importlib.import_module(name)
from celery import current_app
assert current_app.main != "audioset", "importing built the worker's Celery app"
print(len(names))
"""


def test_every_module_imports_with_a_broken_setting_in_the_environment() -> None:
    env = {**os.environ, "AUDIOSET_TOP_K": "0", "AUDIOSET_BROKER_URL": "redis://127.0.0.1:1/0"}
    done = subprocess.run([sys.executable, "-c", PROBE], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert int(done.stdout.strip().splitlines()[-1]) >= 35  # the walk found the whole tree


def test_the_worker_app_reads_settings_when_first_asked_for() -> None:
    env = {**os.environ, "AUDIOSET_TOP_K": "0"}
    probe = "import worker\ntry:\n    worker.celery\nexcept Exception as exc:\n    print(type(exc).__name__)\n"
    done = subprocess.run([sys.executable, "-c", probe], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "ConfigError", done.stderr[-2000:]


def _contracts() -> dict[str, dict[str, object]]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    return {c["name"]: c for c in config["contracts"]}


def _layer_names(contract: dict[str, object]) -> set[str]:
    layers = contract["layers"]
    assert isinstance(layers, list)
    return {name.strip() for layer in layers for name in layer.replace(":", "|").split("|")}


def test_no_two_modules_import_each_other_in_a_circle() -> None:
    packages = ["cli", "audioset_batch", "worker", "producers", "model", "benchmarks"]
    graph = grimp.build_graph(*packages, cache_dir=None)
    circles = []
    for module in sorted(graph.modules):
        for imported in graph.find_modules_directly_imported_by(module):
            if graph.find_shortest_chain(importer=imported, imported=module) is not None:
                circles.append(f"{module} <-> {imported}")
    assert circles == []


def test_every_package_and_module_of_the_core_sits_in_a_layer() -> None:
    """A new module must be placed in the layers contract, so the contract covers it the day it is added."""
    contracts = _contracts().values()
    core = next(c for c in contracts if c.get("containers") == ["audioset_batch"])
    top = next(c for c in contracts if "containers" not in c and c["type"] == "layers")
    placed = _layer_names(core)
    here = {p.stem if p.is_file() else p.name for p in (ROOT / "audioset_batch").iterdir()}
    here -= {"__init__", "__pycache__"}
    assert here - placed == set(), "add these to the core's layers contract in pyproject.toml"
    tops = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests"}
    assert tops - _layer_names(top) == set(), "add these packages to the top-level layers contract"


def test_no_source_module_is_over_400_lines() -> None:
    """A module that grows past this holds more than one job: split it by what each part is."""
    tops = ["cli", "audioset_batch", "worker", "producers", "model", "benchmarks"]
    sources = [p for top in tops for p in (ROOT / top).rglob("*.py")]
    assert len(sources) > 50
    long = {str(p.relative_to(ROOT)): n for p in sources if (n := len(p.read_text().splitlines())) > 400}
    assert long == {}
