"""A small fault-injecting HTTP proxy to put in front of the S3 endpoint."""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

Rule = Callable[[str, str], tuple[int, str] | None]  # (method, path) -> (status, S3 error code) or None


def s3_error(status: int, code: str) -> bytes:
    return (
        f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code>'
        f"<Message>injected {code}</Message><RequestId>fault</RequestId></Error>"
    ).encode()


@dataclass
class FaultProxy:
    target: str
    rules: list[Rule] = field(default_factory=list)
    injected: int = 0
    forwarded: int = 0

    def __post_init__(self) -> None:
        parts = urlsplit(self.target)
        self._host, self._port = parts.hostname or "127.0.0.1", parts.port or 80
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_port}"

    def fail_for(self, seconds: float, status: int = 503, code: str = "SlowDown") -> None:
        """Every request fails with ``status``/``code`` for the next ``seconds``."""
        until = time.monotonic() + seconds
        self.rules.append(lambda _m, _p: (status, code) if time.monotonic() < until else None)

    def fail_next(self, count: int, status: int = 503, code: str = "SlowDown") -> None:
        """The next ``count`` requests fail, whatever the timing (more than the SDK's own retries)."""
        remaining = [count]

        def rule(_m: str, _p: str) -> tuple[int, str] | None:
            with self._lock:
                if remaining[0] <= 0:
                    return None
                remaining[0] -= 1
            return status, code

        self.rules.append(rule)

    def slow(self, path_part: str, seconds: float, method: str = "GET", times: int = 1) -> threading.Event:
        """Delay the first ``times`` matching requests; the returned event is set when one starts."""
        started = threading.Event()
        remaining = [times]

        def rule(m: str, p: str) -> None:
            if m == method and path_part in p:
                with self._lock:
                    if remaining[0] <= 0:
                        return
                    remaining[0] -= 1
                started.set()
                time.sleep(seconds)

        self.rules.append(rule)
        return started

    def deny(self, path_prefix: str, status: int = 403, code: str = "AccessDenied") -> None:
        """Refuse requests for one object (the path starts with ``/bucket/key``), not its results elsewhere."""
        self.rules.append(lambda _m, p: (status, code) if p.startswith(path_prefix) else None)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                for rule in list(proxy.rules):
                    verdict = rule(self.command, self.path)
                    if verdict:
                        with proxy._lock:
                            proxy.injected += 1
                        status, code = verdict
                        data = s3_error(status, code) if self.command != "HEAD" else b""
                        self.send_response(status)
                        self.send_header("Content-Type", "application/xml")
                        self.send_header("Content-Length", str(len(data)))
                        self.end_headers()
                        self.wfile.write(data)
                        return
                conn = http.client.HTTPConnection(proxy._host, proxy._port, timeout=60)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in {"connection"}}
                conn.request(self.command, self.path, body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
                with proxy._lock:
                    proxy.forwarded += 1
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in {"transfer-encoding", "connection", "content-length"}:
                        self.send_header(key, value)
                upstream_length = response.getheader("Content-Length")
                is_head = self.command == "HEAD"
                self.send_header("Content-Length", upstream_length if is_head and upstream_length else str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

            def log_message(self, format: str, *args: object) -> None:
                pass

        return Handler
