"""The dashboard as an ASGI application: server-rendered pages over :mod:`dashboard.reading`, two actions, JSON.

Every endpoint is a plain function: Starlette runs it on its thread pool, since the job store and the object
store block. Pages that change while a job runs hold a fragment that ``dashboard.js`` fetches again every few
seconds; the page works without it (reload).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

from celery import Celery
from jinja2 import Environment, FileSystemLoader, select_autoescape
from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from audioset_batch.errors import AudiosetError
from audioset_batch.jobs.job_store import STATUSES, JobStatus, UnknownJobError, find_job, find_job_status
from audioset_batch.results.search import Hit, UnknownLabelError
from dashboard import reading
from dashboard.charts import bar_chart
from dashboard.reading import Sources
from dashboard.security import COOKIE, MAX_BODY, Guard, Keys, allowed_hosts, bearer_of, safe_next
from producers.enqueue import resend

HERE = Path(__file__).parent
log = logging.getLogger("audioset.dashboard")
#: Seconds between a page's refreshes of its live parts.
REFRESH_SECONDS = 2
FORM_TIMEOUT = 10.0


def templates() -> Environment:
    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(default=True))
    env.globals.update(refresh_ms=REFRESH_SECONDS * 1000, urlencode=urlencode, statuses=STATUSES)
    env.filters["seconds"] = _seconds
    return env


def _seconds(value: float | None) -> str:
    if value is None:
        return "–"
    value = float(value)
    if value < 90:
        return f"{value:.0f} s"
    if value < 5400:
        return f"{value / 60:.0f} min"
    return f"{value / 3600:.1f} h"


class Views:
    def __init__(self, sources: Sources, keys: Keys, make_app: Callable[[], Celery]) -> None:
        self.sources = sources
        self.keys = keys
        self._make_app = make_app
        self._celery: Celery | None = None
        self.env = templates()

    def page(self, request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        html = self.env.get_template(name).render(request=request, csrf=self.keys.csrf, **context)
        return HTMLResponse(html, status_code=status_code)

    @property
    def celery(self) -> Celery:
        if self._celery is None:
            self._celery = self._make_app()
        return self._celery

    # Pages

    def jobs(self, request: Request) -> Response:
        return self.page(request, "jobs.html", **self._jobs_context())

    def jobs_fragment(self, request: Request) -> Response:
        return self.page(request, "_jobs_table.html", **self._jobs_context())

    def _jobs_context(self) -> dict[str, Any]:
        return {"jobs": [reading.job_row(status) for status in self.sources.jobs.list_jobs(50)]}

    def job(self, request: Request) -> Response:
        return self.page(request, "job.html", **self._job_context(request))

    def job_fragment(self, request: Request) -> Response:
        if request.query_params.get("part") == "files":
            return self.page(request, "_job_files.html", **self._job_context(request))
        job = reading.job_row(self._job_status(request))
        return self.page(request, "_job_summary.html", job=job)  # polled every few seconds: counts only

    def _job_context(self, request: Request) -> dict[str, Any]:
        found = self._job_status(request)
        job = found.id
        status = request.query_params.get("status") or None
        if status not in STATUSES:
            status = None
        contains = request.query_params.get("q", "")[:200]
        files = reading.job_files(self.sources, job, status, contains, _int(request.query_params.get("offset"), 0))
        return {
            "job": reading.job_row(found),
            "files": files,
            "page_size": reading.PAGE_SIZE,
            "filter": {"status": status or "", "q": contains},
            "notice": _notice(request),
        }

    def job_plots(self, request: Request) -> Response:
        found = self._job_status(request)
        plots = reading.job_plots(self.sources, found)
        labels = bar_chart([(name, float(n)) for name, n in plots.labels], "clips per top label", "{:.0f}")
        maps = bar_chart(plots.file_maps[:40], "mAP per labelled file", "{:.3f}", top=1.0)
        status = reading.job_row(found)
        return self.page(request, "plots.html", job=status, plots=plots, labels_chart=labels, maps_chart=maps)

    def file(self, request: Request) -> Response:
        url = request.query_params.get("url", "")
        view = reading.file_view(self.sources, url)
        ap = view.per_class_ap
        chart_rows = ap if len(ap) <= 30 else [*ap[:15], *ap[-15:]]
        chart = bar_chart(chart_rows, "average precision per class", "{:.3f}", top=1.0)
        return self.page(request, "file.html", view=view, job=request.query_params.get("job", ""), ap_chart=chart)

    def search(self, request: Request) -> Response:
        params = request.query_params
        label, job = params.get("label", "").strip()[:200], params.get("job", "").strip()[:200]
        min_score = _float(params.get("min_score"), 0.0)
        limit = max(1, min(_int(params.get("limit"), 50), 500))
        hits: list[Hit] = []
        error: str | None = None
        skipped = 0
        if label:
            try:
                scope = find_job(self.sources.jobs, job) if job else None
                hits, skipped = reading.search(self.sources, label, min_score, limit, scope)
            except (UnknownLabelError, UnknownJobError) as exc:
                error = str(exc)
        return self.page(
            request,
            "search.html",
            label=label,
            job=job,
            min_score=min_score,
            limit=limit,
            hits=hits,
            error=error,
            skipped=skipped,
            suggestions=reading.suggestions(self.sources),
            url_of=self.sources.url_of,
        )

    # Actions

    async def retry(self, request: Request) -> Response:
        form = await _form(request)
        if not self._csrf_ok(request, form):
            return PlainTextResponse("missing or stale CSRF field; reload the page", status_code=403)
        job = self._job(request)
        everything = form.get("all") == "1"
        sources = self.sources
        sent = await asyncio.get_running_loop().run_in_executor(
            None, resend, self.celery, sources.jobs, job, sources.settings, everything
        )
        return _back(request, job, "all" if everything else "retried", sent)

    async def cancel(self, request: Request) -> Response:
        form = await _form(request)
        if not self._csrf_ok(request, form):
            return PlainTextResponse("missing or stale CSRF field; reload the page", status_code=403)
        job = self._job(request)
        cancelled = await asyncio.get_running_loop().run_in_executor(None, self.sources.jobs.cancel, job)
        return _back(request, job, "cancelled", cancelled)

    def _csrf_ok(self, request: Request, form: dict[str, str]) -> bool:
        return self.keys.token_matches(bearer_of(request.headers)) or self.keys.csrf_matches(form.get("csrf"))

    # Login

    async def login(self, request: Request) -> Response:
        if request.method == "POST":
            form = await _form(request)
            token, target = form.get("token"), form.get("next")
        else:
            token, target = request.query_params.get("token"), request.query_params.get("next")
        if token is None:
            return self.page(request, "login.html", next=safe_next(target), wrong=False)
        if not self.keys.token_matches(token):
            return self.page(request, "login.html", status_code=401, next=safe_next(target), wrong=True)
        response = RedirectResponse(safe_next(target), status_code=303)
        response.set_cookie(COOKIE, self.keys.session, httponly=True, samesite="strict", path="/")
        return response

    # JSON, for scripts (a Bearer header or the session cookie)

    def api_jobs(self, _request: Request) -> Response:
        return JSONResponse({"jobs": self._jobs_context()["jobs"]})

    def api_job(self, request: Request) -> Response:
        found = self._job_status(request)
        data = reading.job_row(found)
        failed = reading.job_files(self.sources, found.id, "failed", "", 0)
        data["failed_items"] = failed.rows
        return JSONResponse(data)

    def _job(self, request: Request) -> str:
        return self._job_status(request).id

    def _job_status(self, request: Request) -> JobStatus:
        """The job the URL names, read once per request (the page shows its counts)."""
        return find_job_status(self.sources.jobs, request.path_params["job"])


def _notice(request: Request) -> str | None:
    """A fixed sentence for the last action (never text taken from the URL)."""
    done, count = request.query_params.get("done"), _int(request.query_params.get("n"), 0)
    return {
        "retried": f"{count} failed file(s) sent again",
        "all": f"{count} file(s) sent again to be scored anew",
        "cancelled": f"{count} pending file(s) cancelled; a file being scored now finishes and is recorded",
    }.get(done or "")


def _back(request: Request, job: str, done: str, count: int) -> Response:
    if bearer_of(request.headers) is not None:
        return JSONResponse({"job": job, done: count})
    return RedirectResponse(f"/jobs/{job}?{urlencode({'done': done, 'n': count})}", status_code=303)


async def _form(request: Request) -> dict[str, str]:
    """A small urlencoded form (the guard has capped its length), read within a deadline."""
    body = await asyncio.wait_for(request.body(), FORM_TIMEOUT)
    fields = parse_qs(body[:MAX_BODY].decode("utf-8", "replace"), max_num_fields=20)
    return {name: values[0] for name, values in fields.items()}


def _int(value: str | None, default: int) -> int:
    try:
        return int(value) if value is not None else default
    except ValueError:
        return default


def _float(value: str | None, default: float) -> float:
    try:
        number = float(value) if value is not None else default
    except ValueError:
        return default
    return number if number == number else default  # nan


def _not_found(request: Request, exc: Exception) -> Response:
    message = str(exc) if isinstance(exc, UnknownJobError) else "not found"
    if request.url.path.startswith("/api/"):
        return JSONResponse({"error": message}, status_code=404)
    return PlainTextResponse(message, status_code=404)


#: What a page may meet when a store is down; anything else is a bug and keeps its traceback in the log.
UNAVAILABLE: tuple[type[Exception], ...] = (AudiosetError, RedisError, sqlite3.Error, OSError)


def _failed(request: Request, exc: Exception) -> Response:
    """A page that could not be read (the job store or the bucket is down): one line, the details in the log."""
    log.error("dashboard: %s %s failed: %s: %s", request.method, request.url.path, type(exc).__name__, exc)
    message = f"could not read the job store or the results ({type(exc).__name__}); the dashboard's log says more"
    if request.url.path.startswith("/api/"):
        return JSONResponse({"error": message}, status_code=503)
    return PlainTextResponse(message, status_code=503)


def healthz(_request: Request) -> Response:
    return JSONResponse({"status": "ok"})


def build_app(sources: Sources, token: str, bind_host: str, make_app: Callable[[], Celery]) -> Starlette:
    """The dashboard over ``sources``; ``token`` logs in; ``bind_host`` joins the Host allow-list."""
    keys = Keys(token)
    board = Views(sources, keys, make_app)
    routes = [
        Route("/", board.jobs),
        Route("/fragments/jobs", board.jobs_fragment),
        Route("/jobs/{job}", board.job),
        Route("/fragments/jobs/{job}", board.job_fragment),
        Route("/jobs/{job}/plots", board.job_plots),
        Route("/jobs/{job}/retry", board.retry, methods=["POST"]),
        Route("/jobs/{job}/cancel", board.cancel, methods=["POST"]),
        Route("/file", board.file),
        Route("/search", board.search),
        Route("/login", board.login, methods=["GET", "POST"]),
        Route("/healthz", healthz),
        Route("/api/jobs", board.api_jobs),
        Route("/api/jobs/{job}", board.api_job),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    hosts = allowed_hosts(bind_host, sources.settings.ui_allowed_hosts)
    return Starlette(
        routes=routes,
        middleware=[Middleware(Guard, keys=keys, hosts=hosts)],
        exception_handlers={
            UnknownJobError: _not_found,
            404: _not_found,
            **dict.fromkeys(UNAVAILABLE, _failed),
        },
    )
