"""When to try again, and how long to wait: one rule for every retry here (the scoring task's, job-store
calls, the listener's), so what counts as transient cannot differ between them."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from typing import TypeVar

from tenacity import RetryCallState, Retrying, stop_after_delay, wait_exponential

from audioset_batch.errors import AudiosetError

T = TypeVar("T")


def is_transient(exc: BaseException) -> bool:
    """Could the same call succeed later? Outages yes; a bad key, a bad file or a missing permission no."""
    import kombu.exceptions
    import redis

    if isinstance(exc, AudiosetError):
        return exc.transient
    return isinstance(exc, redis.RedisError | kombu.exceptions.OperationalError | ConnectionError | TimeoutError)


def should_retry(error: BaseException, attempt: int, max_attempts: int) -> bool:
    """A failed attempt is tried again while it is transient and ``AUDIOSET_MAX_ATTEMPTS`` allows; anything
    else (and a transient error on the last attempt) ends the file with an error record."""
    return is_transient(error) and attempt < max_attempts


def backoff_delay(attempt: int, base: float, cap: float, jitter: bool = True) -> float:
    """Seconds to wait before retry ``attempt`` (1-based): ``base * 2^(attempt-1)``, capped at ``cap``.

    With ``jitter``, uniform in [base/2, that] (full jitter), so many workers that failed together do
    not retry together.
    """
    ceiling = min(cap, base * 2 ** max(0, attempt - 1))
    return random.uniform(min(base / 2, ceiling), ceiling) if jitter else ceiling


def call_for_up_to(seconds: float, what: str, call: Callable[[], T], log: logging.Logger) -> T:
    """``call()``, tried again on any error with backoff (0.2 s doubling to 5 s) for up to ``seconds``;
    then its last error is raised. For the job store, whose calls must outlive a short Redis restart."""

    def warn(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        delay = state.next_action.sleep if state.next_action else 0.0
        log.warning("job store unavailable for %s (%s: %s); retrying in %.1fs", what, type(exc).__name__, exc, delay)

    retrying = Retrying(
        stop=stop_after_delay(seconds),
        wait=wait_exponential(multiplier=0.2, max=5.0),
        before_sleep=warn,
        reraise=True,
    )
    return retrying(call)
