"""TensorFlow's C++ start-up chatter, kept off stderr.

TensorFlow, absl and TFLite print from C++ straight to file descriptor 2 (oneDNN notices,
CPU feature hints, MLIR converter steps, the XNNPACK delegate line) before Python logging
exists, and ``TF_CPP_MIN_LOG_LEVEL`` does not reach all of it. Those lines would break JSON
log shipping and bury a command's own output, so the few operations that print them run with
file descriptor 2 pointed at ``/dev/null``. ``AUDIOSET_LOG_LEVEL=DEBUG`` shows them again.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

_show = False
_lock = threading.RLock()  # re-entrant: a silenced block may import TensorFlow itself


def show_native_logs(show: bool) -> None:
    """Let TensorFlow's own C++ logs through (debugging); set from the log level."""
    global _show
    _show = show
    if show:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"


@contextmanager
def native_stderr_silenced() -> Iterator[None]:
    """Point file descriptor 2 at /dev/null for the block; Python exceptions still propagate."""
    if _show:
        yield
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with _lock:
        sys.stderr.flush()
        saved = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, 2)
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            os.close(devnull)


class TensorFlowUnavailableError(ImportError):
    """TensorFlow (or Keras) is not installed: a serving-only install, asked for something only TensorFlow does."""


def import_tensorflow() -> ModuleType:
    """``import tensorflow`` (and Keras), quietly; every module of this project imports it through here."""
    try:
        with native_stderr_silenced():
            import keras  # noqa: F401  (loads TensorFlow's C++ runtime, where the chatter comes from)
            import tensorflow  # noqa: F401
    except ImportError as exc:
        if isinstance(exc, TensorFlowUnavailableError):
            raise
        raise TensorFlowUnavailableError(
            f"this needs TensorFlow, which is not installed here ({exc}): training, float32 or bfloat16 scoring, "
            "and models without a compiled form need it (pip install 'tensorflow-cpu>=2.16,<2.22' keras); "
            "a serving-only install scores at --precision int8/auto from the model's compiled form"
        ) from None
    return sys.modules["tensorflow"]
