"""The dashboard in a real browser (Debian's chromium, driven by playwright) against redis-server, an HTTP S3
endpoint and a Celery worker: a job appears, its counts move while it runs, a failed file shows its reason, retry
re-scores it, search returns hits with links, and the console stays clean.

``AUDIOSET_SCREENSHOTS=docs/images`` saves the screenshots the docs show."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from audioset_batch.jobs.factory import open_job_store
from audioset_batch.storage.cos_store import CosStore
from dashboard.factory import make_dashboard
from producers.enqueue import enqueue
from tests.conftest import Stack, WorkerProcess
from tests.helpers import write_h5
from worker.app import make_app

pytestmark = pytest.mark.integration

TOKEN = "browser-test-token-0123456789abcdef"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
def browser() -> Iterator[object]:
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing: .ci/run installs Debian's chromium for the browser tests")
        pytest.skip("needs Debian's chromium (apt-get install chromium); CI installs it")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


def shoot(page: object, name: str) -> None:
    folder = os.environ.get("AUDIOSET_SCREENSHOTS")
    if folder:
        page.screenshot(path=str(Path(folder) / f"{name}.png"), full_page=True)  # type: ignore[attr-defined]


def test_a_job_in_the_browser_from_queued_to_retried(stack: Stack, browser: object, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    settings = stack.settings(ui_token=TOKEN)
    store = CosStore(settings)
    for i in range(3):
        store.upload_file(write_h5(tmp_path / f"g{i}.h5", clips=4, seed=i), stack.input_bucket, f"ui/good{i}.h5")
    store.put_bytes(b"\x89HDF\r\n\x1a\n but cut short", stack.input_bucket, "ui/truncated.h5")
    jobs = open_job_store(settings.effective_state_url)
    queued = enqueue(make_app(settings), jobs, [f"cos://{stack.input_bucket}/ui/"], settings, job_name="street-audio")

    board = make_dashboard(settings, jobs, "127.0.0.1", 0)
    board.server.start()
    errors: list[str] = []
    worker: WorkerProcess | None = None
    try:
        page = browser.new_page(viewport={"width": 1280, "height": 760})  # type: ignore[attr-defined]
        page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: errors.append(str(error)))

        page.goto(f"{board.server.url}/")
        expect(page.locator("h1")).to_have_text("Log in")  # nothing without the token
        page.fill("input[name=token]", TOKEN)
        page.click("button[type=submit]")
        row = page.locator(f'tr[data-job="{queued.job}"]')
        expect(row).to_contain_text("street-audio")
        expect(row.locator('[data-field="pending"]')).to_have_text("4")

        page.click("text=street-audio")
        summary = page.locator("#job-summary")
        expect(summary.locator('[data-field="pending"]')).to_have_text("4")
        worker = WorkerProcess(stack.env, tmp_path / "worker.log")  # the page is not reloaded from here on
        expect(summary.locator('[data-field="scored"]')).to_have_text("3", timeout=90_000)
        expect(summary.locator('[data-field="failed"]')).to_have_text("1", timeout=30_000)
        failed = page.locator("tr.failed")
        expect(failed).to_contain_text("truncated.h5")
        expect(failed.locator(".reason")).to_contain_text("Error")
        shoot(page, "dashboard-job")

        store.upload_file(write_h5(tmp_path / "fixed.h5", clips=4, seed=9), stack.input_bucket, "ui/truncated.h5")
        page.click("#retry")
        expect(page.locator(".notice")).to_have_text("1 failed file(s) sent again")
        expect(summary.locator('[data-field="scored"]')).to_have_text("4", timeout=90_000)
        expect(summary.locator('[data-field="failed"]')).to_have_text("0")
        expect(page.locator("tr.failed")).to_have_count(0)

        page.goto(f"{board.server.url}/")
        expect(row.locator('[data-field="scored"]')).to_have_text("4")
        shoot(page, "dashboard-jobs")

        page.click("text=Search")
        page.fill("input[name=label]", "Class 3")
        page.fill("input[name=job]", "street-audio")
        page.click("form.search button")
        links = page.locator("a.youtube")
        expect(links).to_have_count(16)  # every clip of the four files: no threshold
        assert links.first.get_attribute("href").startswith("https://www.youtube.com/watch?v=vid")
        shoot(page, "dashboard-search")

        page.locator("table.hits a").first.click()
        expect(page.locator("h2", has_text="Top labels per clip")).to_be_visible()
        expect(page.locator("table.clips tbody tr")).to_have_count(4)
        shoot(page, "dashboard-file")
    finally:
        if worker is not None:
            worker.stop()
        board.server.stop()
    assert errors == []
