"""Wall-clock time, injectable so tests can move it instead of sleeping."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Unix epoch seconds."""
        ...


class SystemClock:
    def now(self) -> float:
        return time.time()
