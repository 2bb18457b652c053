"""The ``audioset`` command line: one module per command group, each command a thin shell over the library.

``main`` is the click group; importing this package registers every command on it.
"""

from __future__ import annotations

from cli import calibration, compiling, dashboard, ops, queue, scoring, service, training
from cli.common import main

__all__ = ["calibration", "compiling", "dashboard", "main", "ops", "queue", "scoring", "service", "training"]
