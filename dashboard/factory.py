"""The one place the dashboard is put together from settings (``audioset ui`` and ``audioset run`` both call it)."""

from __future__ import annotations

from dataclasses import dataclass

from audioset_batch.jobs.job_store import JobStore
from audioset_batch.settings import Settings
from audioset_batch.storage.factory import store_for
from dashboard.app import build_app
from dashboard.reading import Sources
from dashboard.server import DashboardServer, Limits, check_bind, dashboard_token
from model.artifact import read_manifest


@dataclass(frozen=True, slots=True)
class Dashboard:
    server: DashboardServer
    token: str
    generated: bool  # the token is new: show it (in the login URL) once

    @property
    def login_url(self) -> str:
        """The URL to open: with the token when it was generated here (as Jupyter prints it), else the login page."""
        return f"{self.server.url}/login?token={self.token}" if self.generated else f"{self.server.url}/"


def make_dashboard(settings: Settings, jobs: JobStore, host: str | None = None, port: int | None = None) -> Dashboard:
    """A dashboard over ``jobs`` and the configured results bucket, not yet started."""
    from worker.app import make_app

    host = settings.ui_host if host is None else host
    check_bind(settings, host)
    manifest = read_manifest(settings.model_path)
    sources = Sources(
        settings=settings,
        jobs=jobs,
        results=store_for(settings.store_scheme, settings),
        classes=manifest.classes,
        model=manifest.tag,
    )
    token, generated = dashboard_token(settings)
    app = build_app(sources, token, host, lambda: make_app(settings))
    limits = Limits(request_timeout=settings.listen_timeout, max_connections=settings.listen_max_connections)
    server = DashboardServer(app, host, settings.ui_port if port is None else port, limits)
    return Dashboard(server=server, token=token, generated=generated)
