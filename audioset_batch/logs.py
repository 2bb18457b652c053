"""Logging: text or JSON lines, with every configured secret masked before it is written."""

from __future__ import annotations

import difflib
import logging
import os
import sys
from contextvars import ContextVar
from typing import Any

import orjson
from pydantic import SecretStr

from audioset_batch.settings import ENV_PREFIX, MASK, Settings, url_password
from model.native_logs import show_native_logs

#: Fields (job, source, attempt, task_id) attached to every log record emitted while a task runs.
log_context: ContextVar[dict[str, Any] | None] = ContextVar("audioset_log_context", default=None)


class ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in (log_context.get() or {}).items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


def secrets_of(settings: Settings) -> list[str]:
    """Every secret value the settings hold, including passwords inside Redis URLs."""
    values = [
        value.get_secret_value()
        for name in type(settings).model_fields
        if isinstance(value := getattr(settings, name), SecretStr)  # every secret field, the day it is added
    ]
    for url in (settings.broker_url, settings.state_url, settings.cos_endpoint, settings.cos_auth_endpoint):
        if url and (password := url_password(url)):
            values.append(password)
    return [v for v in values if len(v) >= 4]


#: Variables with the prefix that are not settings but are read elsewhere (tests, the notebook).
OTHER_VARIABLES = frozenset(
    {"AUDIOSET_DATA_DIR", "AUDIOSET_NOTEBOOK_RESULTS", "AUDIOSET_TEST_REDIS_URL", "AUDIOSET_FAULT_REPORT"}
)


def unknown_variables(environ: dict[str, str] | None = None) -> list[tuple[str, str | None]]:
    """``AUDIOSET_*`` variables that are no setting (a typo is otherwise silently ignored), with a close match."""
    known = [f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields]
    found = []
    for name in sorted(environ if environ is not None else os.environ):
        if name.upper().startswith(ENV_PREFIX) and name.upper() not in known and name.upper() not in OTHER_VARIABLES:
            close = difflib.get_close_matches(name.upper(), known, n=1, cutoff=0.75)
            found.append((name, close[0] if close else None))
    return found


def warn_unknown_variables() -> None:
    for name, close in unknown_variables():
        hint = f"; did you mean {close}?" if close else " (docs/configuration.md lists every setting)"
        logging.getLogger("audioset.settings").warning("%s is not a setting and is ignored%s", name, hint)


class RedactingFilter(logging.Filter):
    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self.secrets = sorted(set(secrets), key=len, reverse=True)

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, MASK)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            record.msg = self.redact(record.getMessage())
            record.args = None
            if record.exc_info and record.exc_info[1] is not None:
                record.exc_text = self.redact(logging.Formatter().formatException(record.exc_info))
                record.exc_info = None
        return True


# Control characters (a newline in an object key) would split one record into several text lines, and
# bidirectional controls (U+202E) would show a line's text in another order than it has.
_BIDI = [0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A)]
_ESCAPES = (
    {i: f"\\x{i:02x}" for i in range(32) if i != 9}
    | {10: "\\n", 13: "\\r", 127: "\\x7f"}
    | {i: f"\\x{i:02x}" for i in range(0x80, 0xA0)}
    | {i: f"\\u{i:04x}" for i in _BIDI}
)


def printable(text: str) -> str:
    """``text`` safe for one terminal line: control, C1 and bidirectional characters escaped.

    For anything read from an input file or a key (video ids, sources) before it is printed or logged as text.
    """
    return text.translate(_ESCAPES)


class TextFormatter(logging.Formatter):
    """One record, one line: control characters in the message are escaped (tracebacks follow as they are)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = printable(record.message)
        return super().formatMessage(record)


class JsonFormatter(logging.Formatter):
    FIELDS = ("job", "source", "attempt", "task_id")

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in self.FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        return orjson.dumps(entry).decode()


def configure_logging(settings: Settings, stream: Any = None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    if settings.log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(name)s %(processName)s: %(message)s"))
    handler.addFilter(ContextFilter())
    handler.addFilter(RedactingFilter(secrets_of(settings)))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log_level)
    logging.captureWarnings(True)  # Python warnings (Celery's, Keras') become log lines: JSON under JSON logging
    show_native_logs(settings.log_level == "DEBUG")
    for noisy in ("ibm_botocore", "ibm_boto3", "urllib3", "h5py", "tensorflow", "absl"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
