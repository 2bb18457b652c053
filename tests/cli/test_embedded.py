"""`audioset run` in a subprocess: folder buckets, filesystem broker, a real worker and the watcher."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import IO

import orjson
import pytest

from tests.conftest import ROOT
from tests.helpers import write_h5


def embedded_env(tiny_compiled: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUDIOSET_")}
    env.update({"AUDIOSET_MODEL_PATH": str(tiny_compiled), "AUDIOSET_TF_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    return env


def start_run(root: Path, tmp_path: Path, tiny_compiled: Path) -> tuple[subprocess.Popen[bytes], IO[bytes]]:
    """`audioset run --root ROOT` in a subprocess, its output in ``tmp_path/run.log``."""
    log = (tmp_path / "run.log").open("wb")
    command = [sys.executable, "-m", "cli", "run", "--root", str(root)]
    process = subprocess.Popen(command, env=embedded_env(tiny_compiled), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    return process, log


def test_file_dropped_into_incoming_is_scored(tmp_path: Path, tiny_compiled: Path) -> None:
    root = tmp_path / "buckets"
    process, log = start_run(root, tmp_path, tiny_compiled)
    try:
        deadline = time.monotonic() + 60
        while not (root / "incoming").is_dir() and time.monotonic() < deadline:
            time.sleep(0.1)
        wait_for(worker_ready(tmp_path), 120, "worker ready", process)
        # Hand-written files in the run's queue folder: the worker drops them and goes on (it once stopped).
        (root / ".broker" / "queue" / "0_a.audioset.score.msg").write_text("{}")
        (root / ".broker" / "queue" / "0_b.audioset.score.msg").write_text("not json")
        source = write_h5(tmp_path / "drop.h5", clips=7, seed=3)
        staged = root / "incoming" / "day1" / ".drop.h5.part"
        staged.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, staged)
        staged.rename(root / "incoming" / "day1" / "drop.h5")
        (root / "incoming" / "bad.h5").write_bytes(b"\x00garbage")

        result = root / "results" / "predictions" / "incoming" / "day1" / "drop.h5.jsonl"
        error = root / "results" / "predictions" / "incoming" / "bad.h5.error.json"
        deadline = time.monotonic() + 120
        while not (result.exists() and error.exists()) and time.monotonic() < deadline:
            assert process.poll() is None, (tmp_path / "run.log").read_text()
            time.sleep(0.2)
        assert result.exists(), (tmp_path / "run.log").read_text()[-3000:]
        lines = [orjson.loads(line) for line in result.read_bytes().splitlines()]
        assert len(lines) == 7 and lines[0]["source"] == "incoming/day1/drop.h5"
        assert (root / "results" / "predictions" / "incoming" / "day1" / "drop.h5.summary.json").exists()
        assert orjson.loads(error.read_bytes())["error"] == "NotHDF5Error"
        log_text = (tmp_path / "run.log").read_text()
        assert "dropped an item on 'audioset.score' that is not a task message" in log_text
        assert "Unrecoverable error" not in log_text
        # The run's dashboard, at the URL it printed, shows the run's job: the scored file and the failed one.
        login = re.search(r"dashboard: (http://127\.0\.0\.1:\d+/login\?token=\S+)", log_text)
        assert login, log_text[-3000:]
        browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor())  # keeps the session cookie
        with browser.open(login.group(1), timeout=30) as page:  # logs in, follows to the jobs page
            jobs_page = page.read().decode()
        assert "watch file://incoming/" in jobs_page and 'data-field="failed">1<' in jobs_page
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(90)
        log.close()
    assert code == 143  # 128 + SIGTERM, as a shell reports a process stopped by it


def test_demo_prints_top_labels_and_exits(tmp_path: Path, tiny_compiled: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "cli", "run", "--demo", "--root", str(tmp_path / "b")],
        env=embedded_env(tiny_compiled),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    clip_lines = [line for line in done.stdout.splitlines() if line.startswith("clip ")]
    assert len(clip_lines) == 5 and "Class" in clip_lines[0]
    assert (tmp_path / "b" / "results" / "predictions" / "incoming" / "demo" / "sample.h5.jsonl").exists()


def test_restart_after_a_crash_sends_again_what_was_in_hand_and_cleans_temp_files(
    tmp_path: Path, tiny_compiled: Path
) -> None:
    """The state kill -9 leaves: the filesystem broker already dropped the message, the watch job holds the
    item as pending, a download sits in the temp folder. A restart must score the file and clean up."""
    from audioset_batch.jobs.factory import open_job_store
    from audioset_batch.storage.local_store import LocalStore
    from audioset_batch.storage.object_store import ObjectURL
    from producers.watcher import watch_job_id

    root = (tmp_path / "buckets").resolve()
    write_h5(root / "incoming" / "lost.h5", clips=4, seed=9)
    (root / "results").mkdir(parents=True)
    etag = LocalStore(root).stat("incoming", "lost.h5").etag
    jobs = open_job_store(f"sqlite:///{root / '.state.db'}")
    job = jobs.create_job(name="watch file://incoming/", job_id=watch_job_id(ObjectURL.parse("file://incoming/")))
    assert jobs.add_items(job, [f"file://incoming/lost.h5#{etag}"])
    leftover = root / ".tmp" / "audioset-crashed" / "input.h5"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"\0" * 1_000_000)
    stale = root / ".broker" / "queue"
    stale.mkdir(parents=True)
    (stale / "0_stale.audioset.score.msg").write_text("{}")

    process, log = start_run(root, tmp_path, tiny_compiled)
    try:
        result = root / "results" / "predictions" / "incoming" / "lost.h5.jsonl"
        deadline = time.monotonic() + 120
        while not result.exists() and time.monotonic() < deadline:
            assert process.poll() is None, (tmp_path / "run.log").read_text()
            time.sleep(0.2)
        assert result.exists(), (tmp_path / "run.log").read_text()[-3000:]
        assert len(result.read_bytes().splitlines()) == 4
        deadline = time.monotonic() + 30
        while jobs.status(job).pending and time.monotonic() < deadline:
            time.sleep(0.2)
        assert jobs.status(job).pending == 0 and jobs.status(job).scored == 1
        assert not leftover.exists() and not (stale / "0_stale.audioset.score.msg").exists()
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(90)
        log.close()
    assert code == 143  # 128 + SIGTERM, as a shell reports a process stopped by it
    assert "sent again" in (tmp_path / "run.log").read_text()


def test_a_file_where_a_bucket_folder_goes_is_one_line_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from click.testing import CliRunner

    from audioset_batch.settings import get_settings
    from cli import main

    (tmp_path / "buckets").write_text("not a folder")
    monkeypatch.setenv("AUDIOSET_LOCAL_ROOT", str(tmp_path / "buckets"))
    get_settings.cache_clear()
    result = CliRunner().invoke(main, ["run"])
    get_settings.cache_clear()
    assert result.exit_code == 2
    assert result.output == (
        f"error: {tmp_path / 'buckets' / 'incoming'}: a file is in the way of the bucket folder; "
        "point AUDIOSET_LOCAL_ROOT (or --root) at a folder, or move the file\n"
    )


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert process.poll() is None, f"the run exited with {process.returncode} before {what}"
        assert time.monotonic() < deadline, f"no {what} after {timeout}s"
        time.sleep(0.1)


def worker_ready(tmp_path: Path) -> Callable[[], bool]:
    return lambda: b" ready." in (tmp_path / "run.log").read_bytes()


def test_a_second_run_in_the_same_folder_says_who_holds_it_and_leaves_the_first_alone(
    tmp_path: Path, tiny_compiled: Path
) -> None:
    root = tmp_path / "buckets"
    first, log = start_run(root, tmp_path, tiny_compiled)
    try:
        wait_for(worker_ready(tmp_path), 120, "worker ready", first)
        # The first run's queue and temp files must survive the second start (a queue its worker does not
        # consume, so that only the second run could remove it).
        queued = root / ".broker" / "queue" / "0_live.elsewhere.msg"
        queued.write_text("{}")
        download = root / ".tmp" / "audioset-live" / "input.h5"
        download.parent.mkdir(parents=True)
        download.write_bytes(b"in use")
        second = subprocess.run(
            [sys.executable, "-m", "cli", "run", "--root", str(root)],
            env=embedded_env(tiny_compiled),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 1
        errors = [line for line in second.stderr.splitlines() if line.startswith("error:")]
        assert errors == [
            f"error: RunLockedError: another `audioset run` is live in {root.resolve()} (pid {first.pid}, since "
            + errors[0].split("since ", 1)[1]
        ]
        assert "Traceback" not in second.stderr and "sent again" not in second.stderr
        assert queued.exists() and download.exists() and first.poll() is None
    finally:
        first.send_signal(signal.SIGINT)
        code = first.wait(60)
        log.close()
    assert code == 130


def test_an_idle_run_stops_on_ctrl_c_at_once_and_a_killed_run_never_blocks_the_next(
    tmp_path: Path, tiny_compiled: Path
) -> None:
    root = tmp_path / "buckets"
    first, log = start_run(root, tmp_path, tiny_compiled)
    wait_for(worker_ready(tmp_path), 120, "worker ready", first)
    first.send_signal(signal.SIGKILL)
    first.wait()
    log.close()
    again, log = start_run(root, tmp_path, tiny_compiled)  # its worker (told of the kill) may still be stopping
    try:
        wait_for(worker_ready(tmp_path), 120, "worker ready after kill -9", again)
        started = time.monotonic()
        again.send_signal(signal.SIGINT)
        code = again.wait(60)
        stopped_in = time.monotonic() - started
    finally:
        log.close()
    assert code == 130
    assert stopped_in < 15, f"an idle run took {stopped_in:.0f}s to stop (it took 60-70 s)"
    assert not [p for p in Path("/proc").iterdir() if p.name.isdigit() and _is_worker_of(p, root)]


def _is_worker_of(proc: Path, root: Path) -> bool:
    try:
        return b"celery" in (proc / "cmdline").read_bytes() and str(root).encode() in (proc / "environ").read_bytes()
    except OSError:
        return False


def test_ctrl_c_while_busy_says_what_it_waits_for_and_a_second_stops_at_once(
    tmp_path: Path, tiny_compiled: Path
) -> None:
    """The file in hand is named; a second Ctrl-C kills the worker; the next start scores the file whole."""
    root = tmp_path / "buckets"
    env = {"AUDIOSET_READ_CHUNK_CLIPS": "1"}  # one clip per read: a 20,000-clip file takes a while
    log = (tmp_path / "run.log").open("wb")
    command = [sys.executable, "-m", "cli", "run", "--root", str(root)]
    process = subprocess.Popen(
        command, env={**embedded_env(tiny_compiled), **env}, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        wait_for(worker_ready(tmp_path), 120, "worker ready", process)
        write_h5(tmp_path / "slow.h5", clips=20_000, seed=4).rename(root / "incoming" / "slow.h5")
        wait_for(lambda: any((root / ".tmp").glob("audioset-*/input.h5")), 60, "the file in hand", process)
        process.send_signal(signal.SIGINT)
        wait_for(
            lambda: b"waiting for the worker to finish" in (tmp_path / "run.log").read_bytes(), 20, "note", process
        )
        process.send_signal(signal.SIGINT)
        code = process.wait(20)
    finally:
        if process.poll() is None:
            process.kill()
        log.close()
    text = (tmp_path / "run.log").read_text()
    assert code == 130
    assert "waiting for the worker to finish incoming/slow.h5" in text
    assert "stopped at once; 1 file(s) in hand are sent again at the next start" in text
    result = root / "results" / "predictions" / "incoming" / "slow.h5.jsonl"
    assert not result.exists()
    (tmp_path / "again").mkdir()
    again, log = start_run(root, tmp_path / "again", tiny_compiled)
    try:
        wait_for(result.exists, 180, "the result after the restart", again)
        assert len(result.read_bytes().splitlines()) == 20_000
    finally:
        again.send_signal(signal.SIGTERM)
        again.wait(60)
        log.close()
