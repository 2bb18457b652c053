"""All configuration, from ``AUDIOSET_*`` environment variables or a ``.env`` file."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from audioset_batch.errors import ConfigError
from model.artifact import DEFAULT_ARTIFACT
from model.choices import Precision

ENV_PREFIX = "AUDIOSET_"
DEFAULT_MODEL_PATH = DEFAULT_ARTIFACT
DEFAULT_QUEUE = "audioset.score"


class Settings(BaseSettings):
    """One field per setting; docs/configuration.md's table mirrors this class."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        protected_namespaces=(),
    )

    # Queue and state
    broker_url: str = Field("redis://127.0.0.1:6379/0", description="Celery broker (Redis URL; rediss:// for TLS).")
    state_url: str | None = Field(
        None,
        description="Where job state and dedupe keys live. Default: the broker if it is Redis, "
        "else a SQLite file in AUDIOSET_LOCAL_ROOT.",
    )
    queue: str = Field(DEFAULT_QUEUE, description="Celery queue that scoring tasks go to.")

    # Object storage
    cos_endpoint: str | None = Field(
        None, description="S3/COS endpoint URL, e.g. https://s3.us-south.cloud-object-storage.appdomain.cloud."
    )
    cos_access_key_id: SecretStr | None = Field(None, description="HMAC access key id.")
    cos_secret_access_key: SecretStr | None = Field(None, description="HMAC secret access key.")
    cos_api_key: SecretStr | None = Field(None, description="IBM Cloud IAM API key (instead of HMAC keys).")
    cos_instance_id: str | None = Field(None, description="COS service-instance id (CRN), with the IAM API key.")
    cos_auth_endpoint: str | None = Field(None, description="IAM token endpoint; the SDK's default when unset.")
    cos_region: str = Field("us-east-1", description="Signing region for HMAC requests.")
    secrets_dir: Path | None = Field(
        None,
        description="Folder of secret files named like the variables (audioset_cos_secret_access_key, …), "
        "e.g. /run/secrets: keeps keys out of the process environment.",
    )
    local_root: Path = Field(Path("buckets"), description="Directory holding one folder per bucket for file:// URLs.")
    input_bucket: str | None = Field(
        None, description="Bucket that an argument without a scheme refers to when it names no local file or folder."
    )
    results_bucket: str = Field("results", description="Bucket that results are written to.")
    results_prefix: str = Field("predictions/", description="Key prefix for every result object.")
    manifest_interval: float = Field(
        10.0, ge=0, le=86_400, description="Seconds between rewrites of a changed job's manifest; 0 writes none."
    )
    allowed_sources: Annotated[tuple[str, ...], NoDecode] = Field(
        (),
        description="Comma-separated buckets (or bucket/prefix) that producers may enqueue and workers may read; "
        "empty = any bucket the credentials reach.",
    )

    # Model and scoring
    model_path: Path = Field(DEFAULT_MODEL_PATH, description="Model artifact directory (model.keras + manifest.json).")
    batch_size: int = Field(
        1024,
        ge=1,
        le=65536,
        description="Clips per forward pass (the OpenVINO form takes at least 8,192 per call, in 256-clip parts).",
    )
    read_chunk_clips: int = Field(8192, ge=1, description="Clips read from the HDF5 file at a time.")
    top_k: int = Field(5, ge=1, description="Labels per clip in each result line.")
    precision: Precision = Field(
        "auto",
        description="Inference precision; auto = the bfloat16 form (OpenVINO) on CPUs with AMX, else int8 (LiteRT), "
        "passing over a form that failed its accuracy gate; else bfloat16 where supported, else float32.",
    )
    full_scores: bool = Field(False, description="Also write every class score per clip.")
    window_hop: int = Field(
        5, ge=1, description="Recordings: frames from one window's start to the next (at most the model's 10)."
    )
    event_threshold: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Recordings: the score at which a window counts a class as present (events); unset = the "
        "model's per-class thresholds (0.3 for a model without them).",
    )
    labels: Literal["top", "threshold"] = Field(
        "top", description="Labels in each record: the top-k, or every class at or above its threshold."
    )
    seconds_per_frame: float = Field(
        0.96, gt=0, le=3600, description="Recordings: seconds between frames, unless the file's attribute says."
    )
    metrics_max_clips: int = Field(
        200_000, ge=0, description="Compute mAP/AUC in the summary only up to this many clips (memory)."
    )
    tf_threads: int = Field(
        0,
        ge=0,
        description="Inference threads (LiteRT, OpenVINO or TensorFlow) per worker process; 0 = cores / concurrency "
        "(a command run alone, such as `score`, uses every core).",
    )

    # Worker reliability
    worker_concurrency: int = Field(0, ge=0, description="Worker processes per `audioset worker`; 0 = one per core.")
    soft_time_limit: int = Field(3600, ge=1, description="Seconds before a file is abandoned with an error record.")
    time_limit: int = Field(3660, ge=1, description="Seconds before the worker child is killed (hard limit).")
    visibility_timeout: int = Field(0, ge=0, description="Redis redelivery timeout; 0 = time limit + 600 s.")
    redelivery_grace: float = Field(
        30.0,
        ge=10,
        description="Seconds before a delivery that no live worker holds (lost in a Redis restart, or its worker "
        "killed) is put back on its queue, and that a queue stays idle before its jobs' pending files (their "
        "messages lost with Redis) are sent again; at least 10, twice the workers' 5 s heartbeat.",
    )
    max_attempts: int = Field(5, ge=1, description="Deliveries of one file before it gets an error record.")
    retry_backoff: float = Field(2.0, gt=0, description="First retry delay in seconds; doubles each attempt.")
    retry_backoff_max: float = Field(300.0, gt=0, description="Cap on the retry delay in seconds.")

    # Limits
    max_object_bytes: int = Field(16 * 1024**3, ge=1, description="Largest input object accepted.")
    max_clips: int = Field(10_000_000, ge=1, description="Most clips accepted in one file.")
    max_frames: int = Field(
        10_000_000, ge=1, description="Most frames in one clip or recording (10,000,000 is about 110 days)."
    )
    max_chunk_bytes: int = Field(
        256 * 1024**2, ge=1, description="Largest HDF5 chunk (decompressed) accepted: guards against compression bombs."
    )
    max_output_ratio: float = Field(
        20.0,
        gt=0,
        description="Result bytes one file may produce per byte it stores (at least 16 MiB): bounds the output and "
        "the scoring time of a file that compresses far better than real embeddings.",
    )

    # Operations
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level.")
    log_format: Literal["text", "json"] = Field("text", description="Human-readable or JSON log lines.")
    watch_interval: float = Field(5.0, gt=0, description="Seconds between bucket listings in `audioset watch`.")
    metrics_port: int = Field(
        0, ge=0, le=65535, description="Serve Prometheus metrics from each worker on this port; 0 = off."
    )
    metrics_host: str = Field("127.0.0.1", description="Address the metrics port binds to (0.0.0.0 to expose it).")
    listen_token: SecretStr | None = Field(
        None,
        description="Bearer token `audioset listen --http` requires (Authorization: Bearer …); "
        "without one it only listens on loopback.",
    )
    listen_max_connections: int = Field(
        256, ge=1, le=10_000, description="Open HTTP connections the listener holds; past it the slowest is dropped."
    )
    listen_timeout: float = Field(10.0, gt=0, description="Seconds an HTTP client has to send its whole request.")
    ui_host: str = Field("127.0.0.1", description="Address `audioset ui` (and `audioset run`'s dashboard) binds to.")
    ui_port: int = Field(8765, ge=0, le=65535, description="Port of the dashboard; 0 = any free port.")
    ui_token: SecretStr | None = Field(
        None,
        description="Token the dashboard asks for at login; unset = a new random one each start, printed in the "
        "login URL (loopback only).",
    )
    ui_allowed_hosts: Annotated[tuple[str, ...], NoDecode] = Field(
        (),
        description="Host names the dashboard answers besides loopback and its bind address (comma-separated).",
    )

    @field_validator("ui_allowed_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(part.strip().lower() for part in value.split(",") if part.strip())
        return value

    @field_validator("allowed_sources", mode="before")
    @classmethod
    def _split_sources(cls, value: object) -> object:
        if isinstance(value, str):
            value = value.split(",")
        if isinstance(value, list | tuple):
            entries = tuple(str(v).strip().strip("/") for v in value if str(v).strip())
            for entry in entries:
                bucket = entry.partition("/")[0]
                if not bucket or bucket.startswith(".") or ".." in entry.split("/"):
                    raise ValueError(f"invalid entry {entry!r}; use bucket or bucket/prefix")
            return entries
        return value

    @field_validator("results_prefix")
    @classmethod
    def _prefix_ends_with_slash(cls, value: str) -> str:
        value = value.lstrip("/")
        if any(part == ".." for part in value.split("/")):
            raise ValueError("must not contain '..'")
        return value if not value or value.endswith("/") else value + "/"

    @field_validator("broker_url")
    @classmethod
    def _known_broker(cls, value: str) -> str:
        # The worker's reliability settings (visibility timeout, acks, redelivery) and the job store are built for
        # Redis; the filesystem transport is the embedded mode's. Anything else is refused, not half supported.
        scheme = value.split("://", 1)[0].lower() if "://" in value else ""
        if scheme not in {"redis", "rediss", "filesystem"}:
            raise ValueError(
                f"unsupported broker {value.split('://', 1)[0] + '://' if scheme else repr(mask_url(value))}; "
                "use redis://[:password@]host:port/db, rediss://… (TLS) or filesystem:// (one machine)"
            )
        if scheme != "filesystem":
            _check_url(value, "redis://127.0.0.1:6379/0")
        return value

    @field_validator("state_url")
    @classmethod
    def _known_state(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if value.startswith("sqlite:///"):
            return value
        if not value.startswith(("redis://", "rediss://")):
            raise ValueError("use redis://…, rediss://… or sqlite:///path/to/state.db")
        return _check_url(value, "redis://127.0.0.1:6379/1")

    @field_validator("cos_endpoint", "cos_auth_endpoint")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return value
        parts = urlsplit(value)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise ValueError(
                f"{mask_url(value)!r} is not an http(s) URL, e.g. https://s3.us-south.cloud-object-storage.appdomain.cloud"
            )
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if (self.cos_access_key_id is None) != (self.cos_secret_access_key is None):
            raise ValueError("AUDIOSET_COS_ACCESS_KEY_ID and AUDIOSET_COS_SECRET_ACCESS_KEY must be set together")
        if self.cos_api_key is not None and not self.cos_instance_id:
            raise ValueError("AUDIOSET_COS_API_KEY needs AUDIOSET_COS_INSTANCE_ID")
        if self.time_limit <= self.soft_time_limit:
            raise ValueError("AUDIOSET_TIME_LIMIT must be greater than AUDIOSET_SOFT_TIME_LIMIT")
        if self.visibility_timeout and self.visibility_timeout <= self.time_limit:
            raise ValueError("AUDIOSET_VISIBILITY_TIMEOUT must be greater than AUDIOSET_TIME_LIMIT")
        return self

    @property
    def store_scheme(self) -> Literal["cos", "file"]:
        """The store that bucket names without a scheme live in: COS when an endpoint is set, else local folders."""
        return "cos" if self.cos_endpoint else "file"

    @property
    def effective_visibility_timeout(self) -> int:
        return self.visibility_timeout or self.time_limit + 600

    @property
    def effective_concurrency(self) -> int:
        return self.worker_concurrency or (os.cpu_count() or 1)

    @property
    def effective_tf_threads(self) -> int:
        return self.tf_threads or max(1, (os.cpu_count() or 1) // self.effective_concurrency)

    @property
    def effective_state_url(self) -> str:
        if self.state_url:
            return self.state_url
        if self.broker_url.startswith(("redis://", "rediss://")):
            return self.broker_url
        return f"sqlite:///{(self.local_root / '.state.db').resolve()}"


MASK = "***"


def _userinfo(url: str) -> tuple[str, str, str, str] | None:
    """``(scheme, user, password, rest)`` of a URL with ``user:password@``, parsed by hand: it must work on
    URLs that ``urlsplit`` refuses (a bad port), since those are the ones an error message repeats."""
    scheme, sep, rest = url.partition("://")
    netloc, slash, path = rest.partition("/")
    userinfo, at, host = netloc.rpartition("@")
    if not sep or not at or ":" not in userinfo:
        return None
    user, _, password = userinfo.partition(":")
    return scheme, user, password, f"{host}{slash}{path}"


def url_password(url: str) -> str | None:
    """The password inside a URL, if any (a Redis URL's ``:password@``, an endpoint's ``user:password@``)."""
    parts = _userinfo(url)
    return parts[2] if parts and parts[2] else None


def mask_url(url: str) -> str:
    """The URL with any password replaced by ``***`` (``redis://:***@host:6379/0``), valid URL or not."""
    parts = _userinfo(url)
    if parts is None or not parts[2]:
        return url
    scheme, user, _password, rest = parts
    return f"{scheme}://{user}:{MASK}@{rest}"


def _check_url(value: str, example: str) -> str:
    """A URL with a host and, if given, a numeric port (``urlsplit`` only fails on the port when asked)."""
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018  (raises ValueError for a port that is not a number)
    except ValueError as exc:
        raise ValueError(f"{mask_url(value)!r} is not a valid URL ({exc}), e.g. {example}") from None
    if not parts.hostname and not parts.path:
        raise ValueError(f"{mask_url(value)!r} names no host, e.g. {example}")
    return value


def _describe(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        field = ".".join(str(part) for part in item["loc"])
        name = f"{ENV_PREFIX}{field.upper()}" if field else "settings"
        lines.append(f"{name}: {item['msg']}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def load_settings(**overrides: object) -> Settings:
    """Build settings from the environment, raising :class:`ConfigError` naming each bad variable.

    With ``AUDIOSET_SECRETS_DIR``, a setting may also come from a file of that folder named like its
    variable (the environment wins): secrets then never sit in the process environment, where
    ``/proc/self/environ`` or a child process could read them.
    """
    secrets_dir = overrides.get("secrets_dir") or os.environ.get(f"{ENV_PREFIX}SECRETS_DIR")
    if secrets_dir and not Path(str(secrets_dir)).is_dir():
        raise ConfigError(f"invalid configuration:\n  {ENV_PREFIX}SECRETS_DIR: {secrets_dir} is not a folder")
    try:
        return Settings(_secrets_dir=secrets_dir or None, **overrides)  # type: ignore[arg-type,call-arg]
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Process-wide settings, read once."""
    return load_settings()
