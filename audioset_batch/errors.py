"""Exception classes. Each says whether a retry could help (``transient``)."""

from __future__ import annotations


class AudiosetError(Exception):
    """Base class for every error this project raises on purpose."""

    transient = False


class ConfigError(AudiosetError):
    """A setting is missing or invalid; the message names the env var."""


class InputFileError(AudiosetError):
    """The input object cannot be scored as it is; retrying will not help."""


class StorageError(AudiosetError):
    """The object store refused or failed a request."""


class TransientStorageError(StorageError):
    """Network failure, timeout, 5xx or throttling: worth retrying with backoff."""

    transient = True


class ObjectNotFoundError(StorageError):
    """The object (or its bucket) does not exist."""


class AccessDeniedError(StorageError):
    """Credentials are missing or lack permission."""


class InvalidObjectKeyError(StorageError):
    """A key tries to escape its bucket or results prefix."""


class SourceNotAllowedError(InvalidObjectKeyError):
    """The object's bucket (or prefix) is not in ``AUDIOSET_ALLOWED_SOURCES``."""


class LimitExceededError(InputFileError):
    """An object exceeds a configured limit (size, clips, time); the message names the limit."""


class FileFailedError(AudiosetError):
    """A file ended ``failed`` (its error record is written and its job item marked): the task raises it
    last, so Celery and Flower show the task as failed rather than successful."""


class AttemptsExhaustedError(AudiosetError):
    """The task was delivered more times than ``AUDIOSET_MAX_ATTEMPTS`` allows."""
