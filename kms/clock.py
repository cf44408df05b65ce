"""The node's clock, injected everywhere time is read; ``--dev`` can move it forward.

In dev mode the offset persists in the data dir (``dev-clock.json``), so time a test
moved forward stays moved across a restart, and edits to that file while the node
is down move time as it starts.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path


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

    def reset(self) -> None:
        self.offset_seconds = 0.0


class PersistentClock(Clock):
    """A dev clock whose offset survives restarts."""

    def __init__(self, path: Path, source: Callable[[], float] = time.time) -> None:
        super().__init__(source)
        self.path = path
        if path.exists():
            self.offset_seconds = float(json.loads(path.read_text())["offset_seconds"])

    def advance(self, seconds: float) -> None:
        super().advance(seconds)
        self._save()

    def reset(self) -> None:
        self.offset_seconds = 0.0
        self._save()

    def _save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"offset_seconds": self.offset_seconds}))
        tmp.replace(self.path)
