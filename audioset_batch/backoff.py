"""The one backoff formula every retry here uses: the task's retries, job-store calls, the listener."""

from __future__ import annotations

import random


def backoff_delay(attempt: int, base: float, cap: float, jitter: bool = True) -> float:
    """Seconds to wait before retry ``attempt`` (1-based): ``base * 2^(attempt-1)``, capped at ``cap``.

    With ``jitter``, uniform in [base/2, that] (full jitter), so many workers that failed together do
    not retry together.
    """
    ceiling = min(cap, base * 2 ** max(0, attempt - 1))
    return random.uniform(min(base / 2, ceiling), ceiling) if jitter else ceiling
