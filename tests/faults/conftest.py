"""Shared pieces of the fault suite: tallying results per scenario and the reliability report."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import orjson
import pytest

from audioset_batch.storage.cos_store import CosStore
from tests.conftest import Stack

REPORT: list[Tally] = []
SECURITY: list[Check] = []


@dataclass
class Check:
    """One attack and how the service answered it."""

    case: str
    expected: str
    observed: str

    @property
    def ok(self) -> bool:
        return self.expected == self.observed


def check(case: str, expected: str, observed: object) -> Check:
    """Record one attack's outcome in the security report (the caller asserts ``.ok``)."""
    row = Check(case, expected, str(observed))
    SECURITY.append(row)
    return row


@dataclass
class Tally:
    scenario: str
    files_in: int
    scored: int
    errored: int
    lost: int
    duplicated: int


def tally(stack: Stack, scenario: str, inputs: dict[str, int], prefix: str = "predictions/") -> Tally:
    """Classify every input by what the results bucket holds for it, and record the row in the report.

    Keys are in the input bucket; ``../<bucket>/<key>`` names an object of another bucket.
    """
    store = CosStore(stack.settings())
    scored = errored = lost = duplicated = 0
    for name, clips in inputs.items():
        key = name[3:] if name.startswith("../") else f"{stack.input_bucket}/{name}"
        body = store.get_bytes(stack.results_bucket, f"{prefix}{key}.jsonl")
        if body is not None:
            indices = [orjson.loads(line)["index"] for line in body.splitlines()]
            if len(indices) != len(set(indices)) or len(indices) > clips:
                duplicated += 1
            elif sorted(indices) == list(range(clips)):
                scored += 1
            else:
                lost += 1  # a partial result counts as lost
        elif store.get_bytes(stack.results_bucket, f"{prefix}{key}.error.json") is not None:
            errored += 1
        else:
            lost += 1
    row = Tally(scenario, len(inputs), scored, errored, lost, duplicated)
    REPORT.append(row)
    return row


def child_pids(pid: int) -> list[int]:
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                children.append(int(entry.name))
    return children


def render(rows: list[Tally]) -> str:
    header = f"{'scenario':54} {'files in':>8} {'scored':>7} {'errored':>8} {'lost':>5} {'duplicated':>10}"
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(f"{r.scenario:54} {r.files_in:>8} {r.scored:>7} {r.errored:>8} {r.lost:>5} {r.duplicated:>10}")
    return "\n".join(lines)


def render_security(rows: list[Check]) -> str:
    header = f"{'attack':58} {'expected':28} {'result':6}"
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(f"{r.case:58} {r.expected:28} {'ok' if r.ok else 'FAIL: ' + r.observed}")
    return "\n".join(lines)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if SECURITY:
        terminalreporter.write_sep("=", "security report")
        terminalreporter.write_line(render_security(SECURITY))
    if not REPORT:
        return
    terminalreporter.write_sep("=", "reliability report")
    terminalreporter.write_line(render(REPORT))
    target = os.environ.get("AUDIOSET_FAULT_REPORT")
    if target:
        Path(target).write_text(json.dumps([asdict(r) for r in REPORT], indent=2))
