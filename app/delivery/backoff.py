"""Retry timing for failed notes: 0.5 s doubling to 60 s, jittered, for up to 24 h."""

from __future__ import annotations

import random
from collections.abc import Callable

BASE_DELAY_S = 0.5
MAX_DELAY_S = 60.0
GIVE_UP_AFTER_S = 24 * 3600.0


def retry_delay_s(
    attempt: int, *, hint_s: float | None = None, rand: Callable[[], float] = random.random
) -> float:
    """Delay before try ``attempt + 1`` (attempt counts from 1): 0.5 s doubling to 60 s,
    jittered down to half so replicas that failed together do not retry together, and never
    sooner than the platform's own wait hint."""
    doublings = min(max(0, attempt - 1), 16)  # 0.5 * 2**16 is far past the cap already
    ceiling = min(MAX_DELAY_S, BASE_DELAY_S * 2.0**doublings)
    delay = ceiling * (0.5 + rand() / 2)
    return max(delay, hint_s) if hint_s is not None else delay
