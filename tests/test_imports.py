"""Importing a module has no side effects: it reads no settings, builds no Celery app, connects to nothing."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import ROOT

PROBE = """
import importlib, pkgutil, socket, sys

def refuse(*args, **kwargs):
    raise AssertionError(f"network access while importing: {args}")

socket.socket.connect = refuse  # any connection attempt fails the probe
socket.create_connection = refuse
names = ["celeryconfig", "benchmarks.__main__"]
for package in ("audioset_batch", "worker", "producers", "model", "benchmarks"):
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
