"""Serving the dashboard: uvicorn, with the listener's limits against slow and crowded clients.

Uvicorn bounds a request's header size but not how long a client may take to send it. Here every connection
must deliver each whole request within ``request_timeout`` seconds, and at ``max_connections`` the connection
that has been sending the longest is dropped, so a fresh request always gets in.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from audioset_batch.errors import ConfigError
from audioset_batch.settings import Settings
from dashboard.security import is_loopback

MAX_HEADER_BYTES = 16 * 1024


@dataclass(frozen=True, slots=True)
class Limits:
    request_timeout: float = 10.0
    max_connections: int = 256


def bounded_protocol(limits: Limits) -> type[H11Protocol]:
    reading: OrderedDict[BoundedProtocol, None] = OrderedDict()  # connections still sending a request, oldest first

    class BoundedProtocol(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(reading) >= limits.max_connections:
                oldest, _ = reading.popitem(last=False)
                oldest.transport.close()
            self._start_reading()

        def _start_reading(self) -> None:
            reading[self] = None
            self._cancel_deadline()
            self._deadline = self.loop.call_later(limits.request_timeout, self._too_slow)

        def _done_reading(self) -> None:
            reading.pop(self, None)
            self._cancel_deadline()

        def _cancel_deadline(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _too_slow(self) -> None:
            if self in reading:
                reading.pop(self, None)
                self.transport.close()

        def handle_events(self) -> None:
            super().handle_events()
            cycle = self.cycle
            if cycle is not None and not cycle.more_body and not cycle.response_complete:
                self._done_reading()  # the whole request is in: the app answers at its own pace

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._start_reading()  # keep-alive: the next request has the same deadline

        def connection_lost(self, exc: Exception | None) -> None:
            self._done_reading()
            super().connection_lost(exc)

    return BoundedProtocol


def check_bind(settings: Settings, host: str) -> None:
    """The listener's rule: without a configured token, loopback only."""
    if settings.ui_token is None and not is_loopback(host):
        raise ConfigError(f"the dashboard binds to {host} only with a token: set AUDIOSET_UI_TOKEN (or keep 127.0.0.1)")


def dashboard_token(settings: Settings) -> tuple[str, bool]:
    """The configured token, or a new random one (and True: it must be shown to the user once)."""
    if settings.ui_token is not None and settings.ui_token.get_secret_value():
        return settings.ui_token.get_secret_value(), False
    return secrets.token_urlsafe(24), True


class DashboardServer:
    """Uvicorn on one socket; :meth:`serve` blocks (and handles Ctrl-C), :meth:`start` runs it on a thread."""

    def __init__(self, app: Any, host: str, port: int, limits: Limits | None = None) -> None:
        limits = limits or Limits()
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            http=bounded_protocol(limits),
            lifespan="off",
            access_log=False,
            log_config=None,
            server_header=False,
            timeout_keep_alive=5,
            h11_max_incomplete_event_size=MAX_HEADER_BYTES,
            limit_concurrency=limits.max_connections * 2,
        )
        self.server = uvicorn.Server(config)
        logging.getLogger("uvicorn.error").setLevel(logging.WARNING)  # no "Started server process" lines
        self.host = host
        self.socket = _bind(host, port)  # here, so a busy port is an OSError the caller sees (and the port known)
        self.thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self.socket.getsockname()[1])

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}"

    def serve(self) -> None:
        self.server.run(sockets=[self.socket])

    def start(self, timeout: float = 10.0) -> None:
        self.thread = threading.Thread(target=self.serve, daemon=True, name="dashboard")
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise ConfigError(f"the dashboard did not start on {self.url}")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(5)
        self.socket.close()


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock
