"""Who may see the dashboard and act through it.

- **Host allow-list**: a page of 127.0.0.1 reached under another name (DNS rebinding) is refused.
- **Token login**: the token is asked once and traded for an HttpOnly, SameSite=Strict cookie holding a value
  derived from it (browsers send no Bearer header; scripts may). The cookie never holds the token itself.
- **Actions** (every POST) need a same-origin ``Origin`` (or ``Referer``) and the page's CSRF value, unless the
  request carries the token as a Bearer header (which no other site can make a browser send).
- **Bounded requests**: a body over :data:`MAX_BODY` is refused before it is read.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Iterable
from http.cookies import SimpleCookie
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

COOKIE = "audioset_session"
MAX_BODY = 16 * 1024
PUBLIC_PATHS = ("/healthz", "/login")
LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})
SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
        b"frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"x-frame-options", b"DENY"),
    (b"cache-control", b"no-store"),
]


def is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Keys:
    """The values derived from the token: the session cookie's and the CSRF field's."""

    def __init__(self, token: str) -> None:
        self._token = token.encode()
        self.session = self._derive(b"session")
        self.csrf = self._derive(b"csrf")

    def _derive(self, purpose: bytes) -> str:
        return hmac.new(self._token, b"audioset-ui:" + purpose, hashlib.sha256).hexdigest()

    def token_matches(self, candidate: str | None) -> bool:
        return bool(candidate) and hmac.compare_digest(str(candidate).encode(), self._token)

    def session_matches(self, candidate: str | None) -> bool:
        return bool(candidate) and hmac.compare_digest(str(candidate).encode(), self.session.encode())

    def csrf_matches(self, candidate: str | None) -> bool:
        return bool(candidate) and hmac.compare_digest(str(candidate).encode(), self.csrf.encode())


def allowed_hosts(bind_host: str, extra: Iterable[str]) -> frozenset[str]:
    names = set(LOOPBACK_NAMES) | {name.lower().strip("[]") for name in extra}
    if bind_host not in ("0.0.0.0", "::", ""):
        names.add(bind_host.lower().strip("[]"))
    return frozenset(names)


def host_name(header: str) -> str:
    """The name of a ``Host`` header, without its port (``[::1]:8765`` → ``::1``)."""
    if header.startswith("["):
        return header[1 : header.find("]")].lower() if "]" in header else ""
    return header.rsplit(":", 1)[0].lower() if header.count(":") == 1 else header.lower()


def session_of(headers: Headers) -> str | None:
    cookie = SimpleCookie()
    try:
        cookie.load(headers.get("cookie", ""))
    except Exception:  # a malformed Cookie header is no session, not an error
        return None
    morsel = cookie.get(COOKIE)
    return morsel.value if morsel is not None else None


def bearer_of(headers: Headers) -> str | None:
    value = headers.get("authorization", "")
    return value[7:].strip() if value.lower().startswith("bearer ") else None


def same_origin(headers: Headers, scheme: str) -> bool:
    """The request came from a page of this dashboard: its Origin (or, lacking one, Referer) names this host."""
    source = headers.get("origin") or headers.get("referer")
    if not source or source == "null":
        return False
    parts = urlsplit(source)
    return parts.scheme == scheme and parts.netloc.lower() == headers.get("host", "").lower()


class Guard:
    """ASGI middleware enforcing the rules above before any route runs."""

    def __init__(self, app: ASGIApp, keys: Keys, hosts: frozenset[str]) -> None:
        self.app = app
        self.keys = keys
        self.hosts = hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        refusal = self.refusal(scope)
        if refusal is not None:
            await refusal(scope, receive, send_with_headers)
            return
        await self.app(scope, receive, send_with_headers)

    def refusal(self, scope: Scope) -> Response | None:
        headers = Headers(scope=scope)
        path, method = scope["path"], scope["method"]
        if host_name(headers.get("host", "")) not in self.hosts:
            return PlainTextResponse("unknown Host; add it to AUDIOSET_UI_ALLOWED_HOSTS", status_code=400)
        if method not in ("GET", "HEAD", "POST"):
            return PlainTextResponse("method not allowed", status_code=405)
        if method == "POST":
            length = headers.get("content-length")
            if length is None or not length.isdigit():
                return PlainTextResponse("Content-Length required", status_code=411)
            if int(length) > MAX_BODY:
                return PlainTextResponse(f"body over {MAX_BODY} bytes", status_code=413)
            if not same_origin(headers, scope.get("scheme", "http")) and bearer_of(headers) is None:
                return PlainTextResponse("cross-origin request refused", status_code=403)
        if path in PUBLIC_PATHS or path.startswith("/static/"):
            return None
        if self.keys.session_matches(session_of(headers)) or self.keys.token_matches(bearer_of(headers)):
            return None
        if path.startswith("/api/") or method == "POST":
            return JSONResponse({"error": "log in first: token required"}, status_code=401)
        query = scope.get("query_string", b"").decode("latin-1")
        target = path + (f"?{query}" if query else "")
        return RedirectResponse(f"/login?next={_quote(target)}", status_code=303)


def _quote(text: str) -> str:
    from urllib.parse import quote

    return quote(text, safe="")


def safe_next(target: str | None) -> str:
    """Where login sends the browser afterwards: a path of this site only (never ``//evil`` or a URL)."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target
