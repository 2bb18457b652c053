"""The dashboard over a real HTTP socket (uvicorn), a SQLite job store and folder buckets scored by the real
pipeline: what each page shows, and who may see it and act through it."""

from __future__ import annotations

import http.client
import json
import re
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlencode

import numpy as np
import pytest
from click.testing import CliRunner

from audioset_batch.jobs.factory import open_job_store
from audioset_batch.jobs.job_store import ItemEnd, JobStatus, JobStore
from audioset_batch.scoring.pipeline import ObjectScorer
from audioset_batch.settings import load_settings
from audioset_batch.storage.local_store import LocalStore
from audioset_batch.storage.object_store import ObjectURL
from cli import main
from dashboard.app import build_app
from dashboard.reading import PAGE_SIZE, Sources
from dashboard.security import COOKIE, Keys
from dashboard.server import DashboardServer, Limits
from tests.helpers import make_labels, write_h5

TOKEN = "test-dashboard-token-0123456789"
CLASSES = make_labels(5, prefix="Sound")
SCRIPT = "<script>alert(1)</script>"


def fake_model(x: np.ndarray) -> np.ndarray:
    """Deterministic scores from the embeddings: enough to rank clips, no TensorFlow."""
    base = x.reshape(len(x), -1)[:, : len(CLASSES)].astype(np.float32) / 255.0
    return base


@dataclass
class Board:
    server: DashboardServer
    jobs: JobStore
    job: str
    root: Path

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        cookie: bool = True,
    ) -> tuple[int, dict[str, str], str]:
        connection = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=10)
        sent = {"Host": self.host, **(headers or {})}
        if cookie:
            sent["Cookie"] = f"{COOKIE}={Keys(TOKEN).session}"
        connection.request(method, path, body=body, headers=sent)
        response = connection.getresponse()
        result = response.status, {k.lower(): v for k, v in response.getheaders()}, response.read().decode()
        connection.close()
        return result

    def post(self, path: str, fields: dict[str, str], origin: str | None = "same") -> tuple[int, dict[str, str], str]:
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        if origin is not None:
            headers["Origin"] = f"http://{self.host}" if origin == "same" else origin
        return self.request("POST", path, urlencode(fields).encode(), headers)


@pytest.fixture(scope="module")
def board(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Board]:
    root = tmp_path_factory.mktemp("buckets")
    settings = load_settings(local_root=root, input_bucket="incoming", results_bucket="results")
    write_h5(root / "incoming" / "batch" / "labelled.h5", clips=6, classes=len(CLASSES), seed=1)
    unsafe = write_h5(root / "incoming" / "batch" / "unsafe.h5", clips=3, seed=2)
    import h5py

    with h5py.File(unsafe, "a") as f:
        del f["video_id_list"]
        f.create_dataset("video_id_list", data=np.array([SCRIPT.encode(), b"ok1", b"ok2"]))
    (root / "incoming" / "batch" / "broken.h5").write_bytes(b"not hdf5 at all")
    scorer = ObjectScorer(settings, fake_model, CLASSES, "fake@1", 10)
    jobs = open_job_store(f"sqlite:///{root / 'state.db'}")
    job = jobs.create_job(name="nightly", queue="audioset.score", force=True)
    names = ["labelled.h5", "unsafe.h5", "broken.h5"]
    jobs.add_items(job, [f"file://incoming/batch/{name}" for name in names])
    for name in names:
        outcome = scorer.score(ObjectURL("file", "incoming", f"batch/{name}"), job=job)
        end = ItemEnd(error=outcome.error, message=outcome.message, clips=outcome.clips, seconds=0.1)
        jobs.mark(job, f"file://incoming/batch/{name}", outcome.status, end)
    recording = write_h5(root / "incoming" / "recordings" / "long.h5", clips=2, frames=23, seed=5)
    assert recording.exists() and scorer.score(ObjectURL("file", "incoming", "recordings/long.h5")).status == "scored"
    sources = Sources(settings=settings, jobs=jobs, results=LocalStore(root), classes=CLASSES, model="fake@1")

    def no_broker() -> object:
        raise AssertionError("these tests send nothing to a broker")

    app = build_app(sources, TOKEN, "127.0.0.1", no_broker)  # type: ignore[arg-type]
    server = DashboardServer(app, "127.0.0.1", 0, Limits(request_timeout=1.5, max_connections=8))
    server.start()
    yield Board(server=server, jobs=jobs, job=job, root=root)
    server.stop()


def test_without_a_session_pages_send_to_login_and_the_api_answers_401(board: Board) -> None:
    status, headers, _ = board.request("GET", f"/jobs/{board.job}?status=failed", cookie=False)
    assert status == 303 and headers["location"] == f"/login?next={quote(f'/jobs/{board.job}?status=failed', safe='')}"
    status, _, body = board.request("GET", "/api/jobs", cookie=False)
    assert status == 401 and "token" in json.loads(body)["error"]
    assert board.request("GET", "/healthz", cookie=False)[0] == 200


def test_login_trades_the_token_for_an_http_only_strict_cookie_that_is_not_the_token(board: Board) -> None:
    status, _, body = board.request("GET", "/login?token=wrong", cookie=False)
    assert status == 401 and "not the dashboard's token" in body
    status, headers, _ = board.request("GET", f"/login?token={TOKEN}&next=/search", cookie=False)
    assert status == 303 and headers["location"] == "/search"
    cookie = headers["set-cookie"]
    assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower() and TOKEN not in cookie
    for target in ("//evil.example/", "https://evil.example/", "/\\evil.example"):
        _, headers, _ = board.request("GET", f"/login?token={TOKEN}&next={quote(target)}", cookie=False)
        assert headers["location"] == "/", target
    status, headers, _ = board.post("/login", {"token": TOKEN, "next": "/"})
    assert status == 303 and COOKIE in headers["set-cookie"]
    assert board.request("GET", "/api/jobs", cookie=False, headers={"Authorization": f"Bearer {TOKEN}"})[0] == 200


def test_a_host_outside_the_allow_list_is_refused_against_dns_rebinding(board: Board) -> None:
    status, _, body = board.request("GET", "/", headers={"Host": f"rebind.example:{board.server.port}"})
    assert status == 400 and "AUDIOSET_UI_ALLOWED_HOSTS" in body
    assert board.request("GET", "/", headers={"Host": f"localhost:{board.server.port}"})[0] == 200


def test_every_page_carries_a_strict_content_security_policy(board: Board) -> None:
    _, headers, _ = board.request("GET", "/")
    assert "script-src 'self'" in headers["content-security-policy"]
    assert headers["x-frame-options"] == "DENY" and headers["x-content-type-options"] == "nosniff"


def test_the_jobs_page_shows_counts_and_the_job_page_lists_failed_files_first_with_reasons(board: Board) -> None:
    status, _, body = board.request("GET", "/")
    assert status == 200 and "nightly" in body and 'data-live="/fragments/jobs"' in body
    row = body[body.index(f'data-job="{board.job}"') :]
    assert 'data-field="scored">2<' in row and 'data-field="failed">1<' in row and 'data-field="pending">0<' in row
    status, _, body = board.request("GET", f"/jobs/{board.job}")
    files = re.findall(r'<tr class="(\w+)">', body)
    assert files == ["failed", "scored", "scored"]
    assert "NotHDF5Error" in body and "not an HDF5 file" in body
    assert 'data-field="queue">audioset.score (--force)<' in body  # where its tasks went, and how
    _, _, only_failed = board.request("GET", f"/jobs/{board.job}?status=failed")
    assert re.findall(r'<tr class="(\w+)">', only_failed) == ["failed"]


def test_what_files_contain_is_escaped_on_every_page(board: Board) -> None:
    board.jobs.add_items(board.job, [f"file://incoming/{SCRIPT}.h5"])
    board.jobs.mark(board.job, f"file://incoming/{SCRIPT}.h5", "failed", ItemEnd(error="X", message=SCRIPT))
    pages = [
        f"/jobs/{board.job}",
        f"/fragments/jobs/{board.job}?part=files",
        "/file?" + urlencode({"url": "file://incoming/batch/unsafe.h5"}),
        "/search?" + urlencode({"label": "Sound 1", "job": board.job}),
        "/search?" + urlencode({"label": SCRIPT}),
    ]
    for page in pages:
        status, _, body = board.request("GET", page)
        assert status == 200, page
        assert SCRIPT not in body and "&lt;script&gt;" in body, page


def test_the_file_page_shows_metrics_per_class_ap_and_top_labels(board: Board) -> None:
    _, _, body = board.request("GET", "/file?" + urlencode({"url": "file://incoming/batch/labelled.h5"}))
    assert "mAP" in body and "Mean AUC" in body and "Average precision per class" in body
    assert body.count('<rect x="230"') == len(CLASSES)  # one bar per class with a positive clip
    assert body.count('<tr>\n  <td class="n">') == 6 and "vid001_0000" in body
    _, _, failed = board.request("GET", "/file?" + urlencode({"url": "file://incoming/batch/broken.h5"}))
    assert "Failed: NotHDF5Error" in failed


def test_search_returns_the_best_clips_with_youtube_links_and_suggests_on_a_typo(board: Board) -> None:
    _, _, body = board.request("GET", "/search?" + urlencode({"label": "sound 2", "limit": 3}))
    assert body.count('class="youtube"') == 3
    scores = [float(s) for s in re.findall(r'<td class="n">(\d\.\d{3})</td>', body)]
    assert scores == sorted(scores, reverse=True) and len(scores) == 3
    assert "https://www.youtube.com/watch?v=vid001_" in body and "&amp;t=" in body
    _, _, typo = board.request("GET", "/search?" + urlencode({"label": "Sond 2"}))
    assert "did you mean: Sound 2" in typo
    assert '<option value="Sound 4">' in typo  # suggestions as you type


def test_plots_count_each_clip_once_under_its_top_label(board: Board) -> None:
    _, _, body = board.request("GET", f"/jobs/{board.job}/plots")
    counts = [int(n) for n in re.findall(r'">(\d+)</text></g>', body.split("mAP per file")[0])]
    assert sum(counts) == 6 + 3  # the two scored files' clips
    assert "mAP per file" in body and "labelled.h5" in body


def test_a_page_about_a_job_reads_its_status_once(board: Board, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    status = board.jobs.status

    def counted(job_id: str) -> JobStatus:
        calls.append(job_id)
        return status(job_id)

    monkeypatch.setattr(board.jobs, "status", counted)
    for path in ("/jobs/{}", "/fragments/jobs/{}", "/fragments/jobs/{}?part=files", "/jobs/{}/plots", "/api/jobs/{}"):
        calls.clear()
        code, _, _ = board.request("GET", path.format(board.job))
        assert code == 200 and calls == [board.job], path  # found and shown with one read of the job store
    calls.clear()
    code, _, body = board.request("GET", "/api/jobs/nightly")  # by name: the status comes from the job list
    assert code == 200 and json.loads(body)["id"] == board.job


def test_actions_need_same_origin_and_the_csrf_field_then_cancel_ends_pending_files(board: Board) -> None:
    job = board.jobs.create_job(name="to-cancel")
    board.jobs.add_items(job, ["file://incoming/a.h5", "file://incoming/b.h5"])
    csrf = Keys(TOKEN).csrf
    assert board.post(f"/jobs/{job}/cancel", {"csrf": csrf}, origin=None)[0] == 403
    assert board.post(f"/jobs/{job}/cancel", {"csrf": csrf}, origin="http://evil.example")[0] == 403
    assert board.post(f"/jobs/{job}/cancel", {"csrf": "forged"})[0] == 403
    assert board.jobs.status(job).pending == 2  # nothing happened
    status, headers, _ = board.post(f"/jobs/{job}/cancel", {"csrf": csrf})
    assert status == 303 and headers["location"] == f"/jobs/{job}?done=cancelled&n=2"
    assert board.jobs.status(job).cancelled == 2
    _, _, page = board.request("GET", headers["location"])
    assert "2 pending file(s) cancelled" in page
    # a script with the token as a Bearer header needs no cookie or CSRF field (no browser can send it cross-site)
    status, _, body = board.request(
        "POST", f"/jobs/{job}/cancel", b"", {"Authorization": f"Bearer {TOKEN}", "Content-Length": "0"}, cookie=False
    )
    assert status == 200 and json.loads(body) == {"job": job, "cancelled": 0}


def test_huge_and_slow_requests_are_cut_off(board: Board) -> None:
    origin = {"Origin": f"http://{board.host}"}
    status, _, body = board.request("POST", f"/jobs/{board.job}/cancel", b"x" * 20_000, origin)
    assert status == 413 and "16384" in body
    slow = socket.create_connection(("127.0.0.1", board.server.port))
    slow.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and never the end of the headers
    started = time.monotonic()
    slow.settimeout(10)
    assert slow.recv(100) == b""  # closed by the server
    assert time.monotonic() - started < 5
    slow.close()
    assert board.request("GET", "/healthz")[0] == 200


def test_a_crowd_of_idle_connections_cannot_lock_a_request_out(board: Board) -> None:
    idle = [socket.create_connection(("127.0.0.1", board.server.port)) for _ in range(20)]  # the cap is 8
    try:
        assert board.request("GET", "/healthz")[0] == 200
    finally:
        for sock in idle:
            sock.close()


def test_a_big_job_is_listed_a_page_at_a_time(board: Board) -> None:
    job = board.jobs.create_job(name="big")
    board.jobs.add_items(job, [f"file://incoming/many/{i:05d}.h5" for i in range(PAGE_SIZE + 50)])
    _, _, body = board.request("GET", f"/jobs/{job}")
    assert body.count('<tr class="pending">') == PAGE_SIZE and f"of {PAGE_SIZE + 50}" in body
    _, _, second = board.request("GET", f"/jobs/{job}?offset={PAGE_SIZE}")
    assert second.count('<tr class="pending">') == 50
    _, _, found = board.request("GET", f"/jobs/{job}?q=00007")
    assert found.count('<tr class="pending">') == 1


def test_an_unknown_job_is_a_404_that_says_where_to_look(board: Board) -> None:
    status, _, body = board.request("GET", "/jobs/no-such-job")
    assert status == 404 and "audioset jobs list" in body


def test_ui_refuses_a_public_address_without_a_token_in_one_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["ui", "--host", "0.0.0.0"], env={"AUDIOSET_LOCAL_ROOT": str(tmp_path)})
    assert result.exit_code != 0
    assert "AUDIOSET_UI_TOKEN" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_a_job_store_that_goes_away_is_a_503_that_says_so(tmp_path: Path) -> None:
    from audioset_batch.jobs.redis_job_store import RedisJobStore

    settings = load_settings(local_root=tmp_path, results_bucket="results")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = probe.getsockname()[1]  # nothing listens here once the probe closes
    jobs = RedisJobStore(f"redis://127.0.0.1:{dead}/0")
    sources = Sources(settings=settings, jobs=jobs, results=LocalStore(tmp_path), classes=CLASSES, model="fake@1")
    server = DashboardServer(build_app(sources, TOKEN, "127.0.0.1", lambda: None), "127.0.0.1", 0)  # type: ignore[arg-type,return-value]
    server.start()
    try:
        board = Board(server=server, jobs=jobs, job="none", root=tmp_path)
        status, _, body = board.request("GET", "/")
        assert status == 503 and "could not read the job store" in body and "ConnectionError" in body
        status, _, body = board.request("GET", "/api/jobs")
        assert status == 503 and "job store" in json.loads(body)["error"]
    finally:
        server.stop()


def test_a_recordings_file_page_shows_its_windows_and_its_events(board: Board) -> None:
    summary = json.loads(
        (board.root / "results" / "predictions" / "incoming" / "recordings" / "long.h5.summary.json").read_text()
    )
    _, _, body = board.request("GET", "/file?" + urlencode({"url": "file://incoming/recordings/long.h5"}))
    assert "Top labels per window" in body and f"{summary['windows']} windows of 2 clip(s)" in body
    assert summary["events"] > 0 and body.count('<td class="n">', body.index("<h2>Events</h2>")) > 0
    events_table = body[
        body.index('<table class="events">') : body.index("</table>", body.index('<table class="events">'))
    ]
    assert events_table.count("<tr>") == summary["events"] + 1  # a header row and one per event
    assert "https://www.youtube.com/watch?v=vid005_0000&amp;t=" in events_table
