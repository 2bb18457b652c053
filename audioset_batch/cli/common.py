"""What every command shares: the ``audioset`` group, settings with logging, one-line errors."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import click

from audioset_batch.errors import AudiosetError, ConfigError
from audioset_batch.jobs import UnknownJobError
from audioset_batch.settings import Settings, get_settings
from model.artifact import ArtifactError
from model.inference import PrecisionUnavailableError

F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger("audioset.cli")


def cli_settings() -> Settings:
    """Settings for a command, with logging configured from them."""
    from audioset_batch.logs import configure_logging

    settings = get_settings()
    configure_logging(settings)
    return settings


def friendly_errors(fn: F) -> F:
    """Turn our exceptions into one clear line on stderr and a non-zero exit code."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (ConfigError, UnknownJobError) as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(2)
        except (AudiosetError, KeyError, ArtifactError, PrecisionUnavailableError) as exc:
            click.echo(f"error: {type(exc).__name__}: {exc}", err=True)
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="audioset-batch")
def main() -> None:
    """Score AudioSet embedding files into per-clip predictions (JSON Lines)."""
    from audioset_batch.hdf5_reader import pin_external_prefixes

    pin_external_prefixes()
