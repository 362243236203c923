"""Retry policy, in one place: what is worth retrying, and how long to wait before it."""

from __future__ import annotations

import random

from ..errors import RemoteError


def is_retryable(exc: BaseException) -> bool:
    """Network trouble, 5xx and throttling are; credentials, permissions, a missing bucket are
    not (they need a person). Anything unexpected is retried: it may be passing, and
    `upload.max_attempts` bounds it."""
    if isinstance(exc, RemoteError):
        return exc.retryable
    return True


def next_delay(attempt: int, base: float, cap: float) -> float:
    """Backoff before try `attempt + 1`: `base` doubled per attempt, capped, with equal jitter
    (half fixed, half random) so entries that failed together do not retry together."""
    delay = min(cap, base * 2.0 ** min(max(attempt - 1, 0), 64))
    return delay / 2 + random.uniform(0, delay / 2)
