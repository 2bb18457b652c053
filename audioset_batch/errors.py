"""Exception classes. Each says whether a retry could help (``transient``)."""

from __future__ import annotations


class AudiosetError(Exception):
    """Base class for every error this project raises on purpose."""

    transient = False


class ConfigError(AudiosetError):
    """A setting is missing or invalid; the message names the env var."""


class LocationError(AudiosetError):
    """A file, folder, URL or prefix given on the command line names nothing to work on."""


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


# --- input files: each names what is wrong with the file (raised by hdf5_reader) ---


class NotHDF5Error(InputFileError):
    """The bytes are not an HDF5 file."""


class EmptyFileError(InputFileError):
    """The object has zero bytes."""


class TruncatedFileError(InputFileError):
    """The file ends before the data it declares."""


class CorruptFileError(InputFileError):
    """HDF5 could not read the file's structure or data."""


class LayoutError(InputFileError):
    """A dataset is missing, or has the wrong rank, width, length or type."""


class MissingDatasetError(LayoutError):
    """A required dataset (``x``) is absent."""


class EmptyDatasetError(LayoutError):
    """``x`` holds zero clips (or zero frames)."""


class NonFiniteError(InputFileError):
    """Float embeddings contain NaN or infinity, or values too large to score."""


class FrameCountError(LayoutError):
    """``x`` has a different number of frames per clip than the model takes."""


class ForeignDataError(InputFileError):
    """A dataset's bytes do not live in the file itself.

    Reading them would read another file on the worker's disk (another tenant's
    download, ``/proc/self/environ``), so such files are refused before any byte is read.
    """


class ExternalStorageError(ForeignDataError):
    """A dataset is declared with HDF5 external raw storage (its bytes are in other files)."""


class VirtualDatasetError(ForeignDataError):
    """A dataset is an HDF5 virtual dataset (it maps data from other files)."""


class ExternalLinkError(ForeignDataError):
    """A dataset name is an HDF5 external link into another file."""


class SoftLinkError(ForeignDataError):
    """A dataset name is a soft link; the layout expects the dataset itself at that name."""


class SparseDatasetError(LimitExceededError):
    """A dataset declares far more data than the file stores (unwritten chunks): scoring it would
    burn the time limit on fill values."""


class OversizeFieldError(LimitExceededError):
    """A per-clip field (video id, label row) is wider than any real file needs."""
