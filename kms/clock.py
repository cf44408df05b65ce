"""The node's clock, injected everywhere time is read; ``--dev`` can move it forward."""

from __future__ import annotations

import time
from collections.abc import Callable


class Clock:
    def __init__(self, source: Callable[[], float] = time.time) -> None:
        self._source = source
        self.offset_seconds = 0.0

    def now(self) -> float:
        return self._source() + self.offset_seconds

    def now_ms(self) -> int:
        return int(self.now() * 1000)

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("the clock only moves forward")
        self.offset_seconds += seconds
