"""How failed authentications reach the audit log without a flood growing it without bound.

Rule: per source address, the first ``limit`` failed authentications in each ``window``
seconds are audited one by one; later ones in that window are only counted, and the count
becomes one summary fact for the window (``additional.summarizedAuthenticationFailures``),
written when the window has ended: by the gateway's flush task, or at that source's next
failure. At most ``max_sources`` addresses are tracked; beyond that, new addresses share one
overflow entry (``*``), so memory and facts per window stay bounded however many addresses
a flood comes from. No I/O here; time is injected.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from kms.domain.errors import (
    IncompleteSignatureException,
    InvalidSignatureException,
    KMSError,
    MissingAuthenticationTokenException,
    UnrecognizedClientException,
)

AUTH_ERRORS = (IncompleteSignatureException, InvalidSignatureException,
               MissingAuthenticationTokenException, UnrecognizedClientException)
OVERFLOW = "*"


@dataclass(slots=True)
class _Window:
    started: float
    audited: int = 0
    counted: int = 0
    operation: str = ""
    error: KMSError | None = None


@dataclass(frozen=True, slots=True)
class Summary:
    """The failures of one source's window that were counted, not audited one by one."""

    source: str
    count: int
    window_seconds: float
    operation: str  # the last one attempted
    error: KMSError  # the last one answered


class AuthFailureLimiter:
    def __init__(self, limit: int = 60, window: float = 60.0, max_sources: int = 4096,
                 now: Callable[[], float] = time.monotonic) -> None:
        self.limit, self.window, self.max_sources, self._now = limit, window, max_sources, now
        self._windows: dict[str, _Window] = {}

    def admit(self, source: str, operation: str,
              error: KMSError) -> tuple[bool, Summary | None]:
        """Whether this failure is audited on its own, and the summary of the source's
        previous window if it ended with failures still only counted."""
        now = self._now()
        if source not in self._windows and len(self._windows) >= self.max_sources:
            source = OVERFLOW
        w = self._windows.get(source)
        ended = None
        if w is None or now - w.started >= self.window:
            ended = self._summary(source, w)
            w = self._windows[source] = _Window(now)
        if w.audited < self.limit:
            w.audited += 1
            return True, ended
        w.counted += 1
        w.operation, w.error = operation, error
        return False, ended

    def due(self, *, all_of_them: bool = False) -> list[Summary]:
        """Summaries of every window that has ended (every window: ``all_of_them``, when
        the node stops); those sources are forgotten."""
        now = self._now()
        out = []
        for source, w in list(self._windows.items()):
            if all_of_them or now - w.started >= self.window:
                del self._windows[source]
                summary = self._summary(source, w)
                if summary is not None:
                    out.append(summary)
        return out

    def _summary(self, source: str, w: _Window | None) -> Summary | None:
        if w is None or not w.counted or w.error is None:
            return None
        return Summary(source, w.counted, self.window, w.operation, w.error)
