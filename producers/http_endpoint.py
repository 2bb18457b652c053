"""The listener's HTTP endpoint: bounded however its clients behave.

One event loop reads every connection, so a client that sends headers and never a body
costs a socket and a coroutine, not a thread. Each connection has one deadline for its
whole request; at the connection cap the oldest connection still reading is dropped to make
room, so a fresh ``/healthz`` always gets in. Complete notifications are handled on a
small fixed thread pool (enqueueing blocks on Redis and the object store).

Authentication: with a token, every request but ``GET /healthz`` must carry
``Authorization: Bearer <token>`` (compared in constant time). MinIO webhooks send exactly
that (``auth_token``); for IBM Code Engine, put the token in the subscription's headers.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from producers.notifications import MAX_PAYLOAD_BYTES

log = logging.getLogger("audioset.listener")

MAX_BODY = MAX_PAYLOAD_BYTES
MAX_HEADER_BYTES = 16 * 1024
REASONS = {
    200: "OK",
    202: "Accepted",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    411: "Length Required",
    413: "Payload Too Large",
    422: "Unprocessable Entity",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class EndpointLimits:
    max_connections: int = 256
    request_timeout: float = 10.0  # seconds for the whole request: headers and body
    handler_threads: int = 4
    max_body: int = MAX_BODY


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def token_matches(header: str | None, token: str) -> bool:
    """``Authorization: Bearer <token>``, compared in constant time."""
    if not header or not header.lower().startswith("bearer "):
        return False
    return hmac.compare_digest(header[7:].strip().encode(), token.encode())


class NotificationEndpoint:
    """``POST`` a notification to any path; ``GET /healthz``; ``GET /stats``.

    ``handle(body)`` returns a :class:`Reply` and runs on the thread pool. Start with
    :meth:`serve_forever` on a thread of its own; :meth:`shutdown` stops it from any thread.
    """

    def __init__(
        self,
        host: str,
        port: int,
        handle: Callable[[bytes], Reply],
        stats: Callable[[], dict[str, Any]],
        token: str | None = None,
        limits: EndpointLimits | None = None,
    ) -> None:
        self.host = host
        self.handle = handle
        self.stats = stats
        self.token = token or None
        self.limits = limits or EndpointLimits()
        self._pool = ThreadPoolExecutor(max_workers=self.limits.handler_threads, thread_name_prefix="listen-http")
        self._loop = asyncio.new_event_loop()
        self._reading: dict[asyncio.StreamWriter, None] = {}  # oldest first
        self._open = 0
        self._ready = threading.Event()
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._connection, host, port, limit=MAX_HEADER_BYTES, backlog=128)
        )
        self.server_port = int(self._server.sockets[0].getsockname()[1])

    def serve_forever(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            self._server.close()
            self._loop.run_until_complete(self._server.wait_closed())
            for writer in list(self._reading):
                writer.close()
            self._loop.close()
            self._pool.shutdown(wait=False, cancel_futures=True)

    def shutdown(self) -> None:
        self._ready.wait(5)
        if not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._loop.stop)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._open += 1
        if self._open > self.limits.max_connections and self._reading:
            oldest = next(iter(self._reading))
            self._reading.pop(oldest, None)
            oldest.close()  # a client that is slowest to send loses its place first
        self._reading[writer] = None
        reply: Reply | None = None
        try:
            try:
                method, path, headers, body = await asyncio.wait_for(
                    self._read_request(reader), self.limits.request_timeout
                )
            except TimeoutError:
                reply = Reply(408, {"error": f"request not complete in {self.limits.request_timeout:g}s"})
            except _BadRequest as exc:
                reply = Reply(exc.status, {"error": str(exc)})
            finally:
                self._reading.pop(writer, None)  # no longer a slow sender that may be dropped
            await self._send(writer, reply or await self._respond(method, path, headers, body))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away
        except Exception:  # never let one connection take the loop down
            log.exception("http connection failed")
        finally:
            self._open -= 1
            writer.close()

    async def _read_request(self, reader: asyncio.StreamReader) -> tuple[str, str, dict[str, str], bytes]:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            raise _BadRequest(431, f"request headers over {MAX_HEADER_BYTES} bytes") from None
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3:
            raise _BadRequest(400, "malformed request line")
        method, path = parts[0].upper(), parts[1]
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        body = b""
        if method == "POST":
            try:
                length = int(headers.get("content-length", ""))
            except ValueError:
                raise _BadRequest(411, f"Content-Length required (1..{self.limits.max_body} bytes)") from None
            if length <= 0 or length > self.limits.max_body:
                raise _BadRequest(400 if length <= 0 else 413, f"body must be 1..{self.limits.max_body} bytes")
            body = await reader.readexactly(length)
        return method, path, headers, body

    async def _respond(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Reply:
        if method == "GET" and path == "/healthz":
            return Reply(200, {"status": "ok"})
        if self.token and not token_matches(headers.get("authorization"), self.token):
            return Reply(401, {"error": "missing or wrong bearer token (Authorization: Bearer …)"})
        if method == "GET" and path == "/stats":
            return Reply(200, await self._loop.run_in_executor(self._pool, self.stats))
        if method == "GET":
            return Reply(404, {"error": "not found; POST notifications, GET /healthz or /stats"})
        if method != "POST":
            return Reply(405, {"error": f"{method} not allowed; POST notifications"})
        return await self._loop.run_in_executor(self._pool, self.handle, body)

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, reply: Reply) -> None:
        data = json.dumps(reply.body).encode()
        head = (
            f"HTTP/1.1 {reply.status} {REASONS.get(reply.status, '')}\r\n"
            f"Server: audioset-listen\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n"
        )
        try:
            writer.write(head.encode() + data)
            await asyncio.wait_for(writer.drain(), 10)
        except (ConnectionError, TimeoutError):
            pass
