"""When to try a failed delivery again. Pure: the random source is injected."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

from relay.config import RetrySettings


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    # Delay before retry 1, 2, ... ; its length is the number of retries.
    delays: tuple[float, ...]
    jitter: float = 0.0
    max_retry_after: float = 3600.0

    @classmethod
    def from_settings(cls, settings: RetrySettings) -> RetryPolicy:
        if settings.schedule_seconds is not None:
            delays = tuple(settings.schedule_seconds)
        else:
            delays = tuple(settings.base_seconds * 2**n for n in range(settings.max_retries))
        return cls(delays, settings.jitter, settings.max_retry_after_seconds)

    @property
    def max_attempts(self) -> int:
        return len(self.delays) + 1


def next_delay(
    policy: RetryPolicy,
    attempts_made: int,
    *,
    eligible_for_retry: bool = True,
    retry_after: float | None = None,
    rand: Callable[[], float] = random.random,
) -> float | None:
    """Seconds until the next try after ``attempts_made`` failed tries, or None: give up.

    Jitter spreads retries of a burst of failures by up to ±jitter of the delay. A
    receiver's Retry-After is honoured when it asks for longer, up to max_retry_after.
    """
    if not eligible_for_retry or attempts_made >= policy.max_attempts:
        return None
    base = policy.delays[attempts_made - 1] if attempts_made >= 1 else 0.0
    delay = base * (1 + policy.jitter * (2 * rand() - 1))
    if retry_after is not None and retry_after > delay:
        delay = min(retry_after, policy.max_retry_after)
    return max(delay, 0.0)
