"""What every command shares: the ``audioset`` group, settings with logging, one-line errors, notes, progress."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

import click

from audioset_batch.errors import AudiosetError, ConfigError
from audioset_batch.jobs.job_store import JobStore, UnknownJobError
from audioset_batch.settings import Settings, get_settings
from model.artifact_errors import ArtifactError
from model.choices import PRECISIONS
from model.inference import PrecisionUnavailableError
from model.labels import LabelFileError
from model.native_logs import TensorFlowUnavailableError
from model.train_config import TrainConfigError, TrainingDataError

log = logging.getLogger("audioset.cli")

#: Errors a user can cause and fix: one line naming the class, exit 1.
USER_ERRORS = (
    AudiosetError,
    ArtifactError,
    PrecisionUnavailableError,
    TensorFlowUnavailableError,
    LabelFileError,
    TrainingDataError,
    TrainConfigError,
)
# Raised by redis-py, kombu and sqlite3 when the broker or job store cannot be reached (matched by name, so
# that a command which never touches them does not import them).
_UNREACHABLE = {
    "redis.exceptions.ConnectionError",
    "redis.exceptions.TimeoutError",
    "redis.exceptions.AuthenticationError",
    "kombu.exceptions.OperationalError",
    "sqlite3.OperationalError",
}


def cli_settings() -> Settings:
    """Settings for a command, with logging configured from them."""
    from audioset_batch.logs import configure_logging, warn_unknown_variables

    settings = get_settings()
    configure_logging(settings)
    warn_unknown_variables()
    return settings


def json_logs() -> bool:
    """``AUDIOSET_LOG_FORMAT=json``: stderr then carries JSON lines only (notes and errors included)."""
    return _logging_setting("log_format") == "json"


def _logging_setting(name: str) -> str:
    """A logging setting, also while the settings themselves are invalid (the error must still be printed)."""
    try:
        return str(getattr(get_settings(), name))
    except ConfigError:  # the raw variable is all there is
        return os.environ.get(f"AUDIOSET_{name.upper()}", "").strip().lower()


def note(message: str, **fields: Any) -> None:
    """A line for the person at the terminal (stderr): plain text, or a JSON log line under JSON logging.

    ``fields`` (a scoring summary) are printed as one JSON object, or merged into the JSON log line.
    """
    if json_logs():
        _json_line(logging.INFO, message, fields)
    else:
        click.echo(json.dumps(fields) if fields else message, err=True)


def warn(message: str) -> None:
    """A warning line on stderr (``warning: …``, or a JSON log line); the command goes on."""
    if json_logs():
        _json_line(logging.WARNING, message)
    else:
        click.echo(f"warning: {message}", err=True)


def fail(message: str, code: int = 1) -> NoReturn:
    """Stop with one line on stderr (``error: …``, or a JSON log line) and a non-zero exit code."""
    if json_logs():
        _json_line(logging.ERROR, message)
    else:
        click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _json_line(level: int, message: str, fields: dict[str, Any] | None = None) -> None:
    from audioset_batch.logs import JsonFormatter

    record = logging.LogRecord(log.name, level, __file__, 0, message, None, None)
    line = JsonFormatter().format(record)
    if fields:
        line = json.dumps({**json.loads(line), **fields})
    click.echo(line, err=True)


def progress_bar(total: int, desc: str, unit: str, quiet: bool = False) -> Any:
    """A tqdm bar on stderr; off with --quiet, under JSON logging, or when stderr is not a terminal."""
    from tqdm import tqdm

    disable = quiet or json_logs() or not sys.stderr.isatty()
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=disable)


class LocalPath(click.Path):
    """A local file or folder option: a plain path, or the same as ``file:///absolute/path``."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and value[:8].lower() == "file:///":
            from urllib.parse import unquote

            value = unquote(value[7:])
        return self.convert_local(value, param, ctx)

    def convert_local(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        """Check and convert the plain local path (any ``file:///`` prefix already removed)."""
        return super().convert(value, param, ctx)


class ModelPath(LocalPath):
    """A model artifact folder that exists; a file given in its place gets a hint, not click's "is a file"."""

    def __init__(self) -> None:
        super().__init__(file_okay=False, exists=True, path_type=Path)

    def convert_local(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if Path(value).is_file():
            self.fail(
                f"{str(value)!r} is a file; a model is a folder holding model.keras and manifest.json "
                "(e.g. model/pretrained/audioset-default)",
                param,
                ctx,
            )
        return super().convert_local(value, param, ctx)


quiet_option = click.option("-q", "--quiet", is_flag=True, help="No progress bar.")


def output_file(path: Path) -> Path:
    """An output file's folder is created (a folder given as the file is refused by click itself)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        fail(f"cannot create the folder for {path}: {exc.strerror or exc}")
    return path


def open_jobs(settings: Settings) -> JobStore:
    """The job store a command reads, in this order: ``AUDIOSET_STATE_URL`` when set; else the state of an
    ``audioset run`` kept in ``AUDIOSET_LOCAL_ROOT`` (the folder where it ran), whatever listens on the broker's
    port; else the broker's Redis. A line says when the local state is read."""
    from audioset_batch.jobs.factory import open_job_store

    local = local_state(settings)
    if settings.state_url or local is None:
        return open_job_store(settings.effective_state_url)
    if not settings.broker_url.startswith("filesystem"):
        note(f"reading the local `audioset run` state in {local} (AUDIOSET_STATE_URL chooses another job store)")
    return open_job_store(f"sqlite:///{local.resolve()}")


def local_state(settings: Settings) -> Path | None:
    """The job state of an ``audioset run`` in ``AUDIOSET_LOCAL_ROOT``, if there is one."""
    from cli.embedded import embedded_state_file

    path = embedded_state_file(settings.local_root)
    return path if path.is_file() else None


def local_state_hint(settings: Settings) -> str:
    """Where to look when a job is not found: the other job store, if there is one."""
    local = local_state(settings)
    if local is None or not settings.state_url or settings.state_url.startswith("sqlite:"):
        return ""  # no local state, or it is the one that was read
    return f"; jobs of `audioset run` are in its own state: AUDIOSET_STATE_URL=sqlite:///{local.resolve()}"


def _unreachable(exc: BaseException) -> bool:
    return any(f"{cls.__module__}.{cls.__name__}" in _UNREACHABLE for cls in type(exc).__mro__)


def _unreachable_message(exc: BaseException) -> str:
    from audioset_batch.settings import mask_url

    settings = get_settings()
    where = mask_url(settings.effective_state_url)
    broker = mask_url(settings.broker_url)
    places = where if where == broker else f"{broker} (broker) or {where} (job store)"
    return (
        f"cannot reach {places}: {type(exc).__name__}: {exc}; start it or fix AUDIOSET_BROKER_URL / "
        "AUDIOSET_STATE_URL (`audioset doctor` checks both)"
    )


def _exit_for(exc: Exception) -> NoReturn:
    """One clear line on stderr and a non-zero exit code for an error, never a traceback.

    ``AUDIOSET_LOG_LEVEL=DEBUG`` lets an unexpected error's traceback through.
    """
    if isinstance(exc, ConfigError | UnknownJobError):
        fail(str(exc), 2)
    if isinstance(exc, USER_ERRORS):
        fail(f"{type(exc).__name__}: {exc}")
    if _unreachable(exc):
        fail(_unreachable_message(exc))
    if isinstance(exc, OSError):
        where = f"{exc.filename}: " if exc.filename else ""
        fail(f"{where}{exc.strerror or exc}")
    if _logging_setting("log_level").upper() == "DEBUG":
        raise exc
    fail(f"unexpected {type(exc).__name__}: {exc} (AUDIOSET_LOG_LEVEL=DEBUG shows the traceback)")


class AudiosetCommand(click.Command):
    """Every command: its settings loaded once (logging configured from them) and passed as ``ctx.obj``
    (take them with ``@click.pass_obj``), and every error turned into one line by :func:`_exit_for`."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            ctx.obj = cli_settings()
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Exception as exc:
            _exit_for(exc)


class AudiosetGroup(click.Group):
    """A group whose commands are :class:`AudiosetCommand` and whose subgroups are groups like it."""

    command_class = AudiosetCommand
    group_class = type


json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable output: JSON on stdout.")
precision_option = click.option(
    "--precision",
    type=click.Choice(PRECISIONS),
    default=None,
    help="Inference precision (default: AUDIOSET_PRECISION).",
)


@click.group(cls=AudiosetGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="audioset-batch")
def main() -> None:
    """Score AudioSet embedding files into per-clip predictions (JSON Lines)."""
    from audioset_batch.scoring.hdf5_reader import pin_external_prefixes

    pin_external_prefixes()
