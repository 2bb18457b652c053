"""Operations: doctor, reverse search, JSON logs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from audioset_batch.results.search import Hit, UnknownLabelError, resolve_label, search_records
from cli import main
from tests.conftest import ROOT, Stack, WorkerProcess, free_port
from tests.helpers import make_labels, stack_tag, wait_job, write_h5


def test_resolve_label_by_name_or_mid_with_suggestions() -> None:
    classes = make_labels(5, prefix="Car")
    assert resolve_label("car 3", classes).index == 3
    assert resolve_label("/M/TEST001", classes).index == 1
    with pytest.raises(UnknownLabelError, match="did you mean: Car 2"):
        resolve_label("Cra 2", classes)


def test_search_ranks_across_records_and_keeps_the_best() -> None:
    label = make_labels(3)[1]
    records = [
        {
            "source": "b/a.h5",
            "index": i,
            "video_id": "vid" if i == 2 else None,
            "start_time_seconds": 30.0,
            "labels": [{"index": 1, "score": s}],
        }
        for i, s in enumerate([0.2, 0.9, 0.7, 0.95])
    ] + [
        {"source": "b/full.h5", "index": 0, "scores": [0.0, 0.8, 0.0], "labels": []},
        {"source": "b/other.h5", "index": 0, "labels": [{"index": 0, "score": 0.99}]},
    ]
    hits = search_records(records, label, min_score=0.5, limit=3)
    assert [(h.source, h.index, h.score) for h in hits] == [
        ("b/a.h5", 3, 0.95),
        ("b/a.h5", 1, 0.9),
        ("b/full.h5", 0, 0.8),
    ]
    assert (
        Hit(
            0.7,
            "s",
            2,
            "abc",
            30.5,
        ).youtube_url
        == "https://www.youtube.com/watch?v=abc&t=30"
    )


def test_search_cli_over_local_results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_model: Path) -> None:
    from audioset_batch.settings import get_settings

    results = tmp_path / "results" / "predictions"
    results.mkdir(parents=True)
    for n in range(3):
        lines = [
            orjson.dumps(
                {
                    "source": f"in/{n}.h5",
                    "index": i,
                    "video_id": f"v{n}{i}",
                    "start_time_seconds": 10.0,
                    "labels": [{"index": 4, "mid": "/m/test004", "name": "Class 4", "score": 0.1 * (n + i)}],
                }
            )
            for i in range(4)
        ]
        (results / f"{n}.h5.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    (results / "ignored.summary.json").write_text("{}")
    for name in [n for n in os.environ if n.startswith("AUDIOSET_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("AUDIOSET_LOCAL_ROOT", str(tmp_path))
    monkeypatch.setenv("AUDIOSET_MODEL_PATH", str(tiny_model))
    get_settings.cache_clear()
    out = CliRunner().invoke(
        main,
        [
            "search",
            "class 4",
            "--results",
            "file://results/predictions/",
            "--min-score",
            "0.35",
            "--limit",
            "2",
            "--json",
        ],
    )
    assert out.exit_code == 0, out.output
    hits = [json.loads(line) for line in out.stdout.splitlines()]
    assert [(h["source"], h["index"]) for h in hits] == [("in/2.h5", 3), ("in/2.h5", 2)]
    assert hits[0]["youtube_url"] == "https://www.youtube.com/watch?v=v23&t=10"
    typo = CliRunner().invoke(main, ["search", "Clas 4", "--results", "file://results/predictions/"])
    assert typo.exit_code == 1 and "did you mean" in typo.output
    get_settings.cache_clear()


def test_search_skips_and_counts_malformed_lines_and_prints_hostile_ids_escaped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_model: Path
) -> None:
    """One bad line used to abort the whole search; an id with a newline forged a hit line, U+202E reordered it."""
    from audioset_batch.settings import get_settings

    results = tmp_path / "results" / "predictions"
    results.mkdir(parents=True)
    good = {"source": "in/a.h5", "index": 0, "labels": [{"index": 4, "score": 0.9}]}
    forged = "\n0.999  forged #0\u202e"
    hostile = {"source": f"in/b{forged}", "index": 1, "video_id": f"x{forged}", "labels": [{"index": 4, "score": 0.8}]}
    lines = [orjson.dumps(good), b'{"truncated', b"[1, 2]", orjson.dumps({**good, "index": 2, "labels": "x"})]
    (results / "a.h5.jsonl").write_bytes(b"\n".join([*lines, orjson.dumps(hostile)]) + b"\n")
    for name in [n for n in os.environ if n.startswith("AUDIOSET_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("AUDIOSET_LOCAL_ROOT", str(tmp_path))
    monkeypatch.setenv("AUDIOSET_MODEL_PATH", str(tiny_model))
    get_settings.cache_clear()
    out = CliRunner().invoke(main, ["search", "class 4", "--results", str(results)])
    get_settings.cache_clear()
    assert out.exit_code == 0, out.output
    hits = out.stdout.splitlines()
    assert len(hits) == 2 and hits[0].startswith("0.900") and hits[1].startswith("0.800")
    assert "\u202e" not in out.stdout and "in/b\\n0.999  forged #0\\u202e" in hits[1]
    assert "v=x%0A0.999%20%20forged%20%230%E2%80%AE&t=0" in hits[1]
    assert "skipped 2 line(s) that are not result records, the first at" in out.stderr
    assert "a.h5.jsonl line 2" in out.stderr


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        env={**os.environ, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )


@pytest.mark.integration
def test_doctor_passes_on_a_healthy_stack_and_explains_failures(stack: Stack) -> None:
    healthy = cli(stack.env, "doctor")
    assert healthy.returncode == 0, healthy.stdout + healthy.stderr
    assert "PASS  broker" in healthy.stdout and "PASS  results write" in healthy.stdout
    assert "PASS  model" in healthy.stdout
    broken = cli(
        {
            **stack.env,
            "AUDIOSET_BROKER_URL": f"redis://127.0.0.1:{free_port()}/0",
            "AUDIOSET_RESULTS_BUCKET": "no-such-bucket-here",
        },
        "doctor",
    )
    assert broken.returncode == 1
    assert "FAIL  broker" in broken.stdout and "fix: start Redis" in broken.stdout
    assert "FAIL  bucket no-such-bucket-here" in broken.stdout
    assert stack.env["AUDIOSET_COS_SECRET_ACCESS_KEY"] not in broken.stdout + broken.stderr


@pytest.mark.integration
def test_json_logs_carry_job_source_and_attempt(stack: Stack, tmp_path: Path) -> None:
    from audioset_batch.jobs.factory import open_job_store
    from audioset_batch.storage.cos_store import CosStore
    from producers.enqueue import enqueue
    from worker.app import make_app

    env = {**stack.env, "AUDIOSET_LOG_FORMAT": "json"}
    settings = stack.settings()
    CosStore(settings).upload_file(write_h5(tmp_path / "j.h5", clips=2), stack.input_bucket, "json/j.h5")
    worker = WorkerProcess(env, tmp_path / "w.log", via_cli=True)  # `audioset worker`, as users start it
    try:
        jobs = open_job_store(settings.effective_state_url)
        job = enqueue(make_app(settings), jobs, [f"cos://{stack.input_bucket}/json/"], settings).job
        wait_job(jobs, job, 60)
    finally:
        worker.stop()
    lines = [line for line in worker.text().splitlines() if line.strip()]
    # stdout and stderr merged, as a log collector sees them: no banner, only JSON (and Celery's shutdown notice).
    assert [line for line in lines if not line.startswith("{")] == ["worker: Warm shutdown (MainProcess)"]
    entries = [json.loads(line) for line in lines if line.startswith("{")]
    scored = [e for e in entries if e["message"].startswith("scored ")]
    assert scored, worker.text()[-2000:]
    assert scored[0]["job"] == job and scored[0]["source"] == f"cos://{stack.input_bucket}/json/j.h5"
    assert scored[0]["attempt"] == 1 and scored[0]["level"] == "INFO"


@pytest.mark.integration
def test_prometheus_metrics_from_two_worker_processes(stack: Stack, tmp_path: Path) -> None:
    import re
    import urllib.request

    from audioset_batch.jobs.factory import open_job_store
    from audioset_batch.storage.cos_store import CosStore
    from producers.enqueue import enqueue
    from worker.app import make_app

    port = free_port()
    settings = stack.settings()
    store = CosStore(settings)
    for i in range(4):
        store.upload_file(write_h5(tmp_path / f"{i}.h5", clips=3, seed=i), stack.input_bucket, f"metrics/{i}.h5")
    store.put_bytes(b"junk", stack.input_bucket, "metrics/bad.h5")
    worker = WorkerProcess({**stack.env, "AUDIOSET_METRICS_PORT": str(port)}, tmp_path / "w.log", concurrency=2)
    try:
        jobs = open_job_store(settings.effective_state_url)
        job = enqueue(make_app(settings), jobs, [f"cos://{stack.input_bucket}/metrics/"], settings).job
        wait_job(jobs, job, 90)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            text = response.read().decode()
        listening = [
            line.split()[1]
            for table in ("/proc/net/tcp", "/proc/net/tcp6")
            for line in Path(table).read_text().splitlines()[1:]
            if line.split()[1].endswith(f":{port:04X}") and line.split()[3] == "0A"
        ]
    finally:
        worker.stop()
    assert listening == [f"0100007F:{port:04X}"]  # loopback only unless AUDIOSET_METRICS_HOST says otherwise

    def value(pattern: str) -> float:
        match = re.search(rf"^{pattern} ([0-9.e+]+)$", text, re.MULTILINE)
        assert match, f"{pattern} not in metrics:\n{text[:3000]}"
        return float(match.group(1))

    assert value(r'audioset_files_total\{status="scored"\}') == 4
    assert value(r'audioset_files_total\{status="failed"\}') == 1
    assert value(r"audioset_clips_total") == 12
    assert value(r'audioset_failures_total\{error="NotHDF5Error"\}') == 1
    assert value(r"audioset_scoring_seconds_count") == 4
    assert value(rf'audioset_model_info\{{model="{re.escape(stack_tag())}"\}}') == 1
    assert value(rf'audioset_queue_depth\{{queue="{stack.env["AUDIOSET_QUEUE"]}"\}}') == 0
