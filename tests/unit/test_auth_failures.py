"""The rule that bounds audit facts for failed authentications (kms.api.auth_failures)."""

from __future__ import annotations

from kms.api.auth_failures import OVERFLOW, AuthFailureLimiter
from kms.domain.errors import InvalidSignatureException, UnrecognizedClientException

BAD_KEY = UnrecognizedClientException("The security token included in the request is invalid.")


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_the_first_failures_of_a_window_are_audited_the_rest_summarized_once() -> None:
    clock = Clock()
    limiter = AuthFailureLimiter(limit=3, window=60, now=clock)
    admitted = [limiter.admit("10.0.0.1", "Encrypt", BAD_KEY)[0] for _ in range(10)]
    assert admitted == [True] * 3 + [False] * 7
    assert limiter.due() == []  # the window is still open
    clock.t += 60
    [summary] = limiter.due()
    assert (summary.source, summary.count, summary.operation) == ("10.0.0.1", 7, "Encrypt")
    assert summary.error is BAD_KEY
    assert limiter.due() == []  # written once


def test_the_next_failure_after_a_window_carries_its_summary() -> None:
    clock = Clock()
    limiter = AuthFailureLimiter(limit=1, window=10, now=clock)
    limiter.admit("a", "ListKeys", BAD_KEY)
    last = InvalidSignatureException("mismatch")
    assert limiter.admit("a", "Decrypt", last) == (False, None)
    clock.t += 10
    audited, ended = limiter.admit("a", "ListKeys", BAD_KEY)
    assert audited and ended is not None
    assert (ended.count, ended.operation, ended.error) == (1, "Decrypt", last)


def test_sources_are_separate_and_their_number_is_bounded() -> None:
    clock = Clock()
    limiter = AuthFailureLimiter(limit=1, window=60, max_sources=2, now=clock)
    assert limiter.admit("a", "X", BAD_KEY)[0] and limiter.admit("b", "X", BAD_KEY)[0]
    # A third and a fourth address share one overflow entry: one fact, then counting.
    assert limiter.admit("c", "X", BAD_KEY)[0] is True
    assert limiter.admit("d", "X", BAD_KEY)[0] is False
    clock.t += 60
    assert [(s.source, s.count) for s in limiter.due()] == [(OVERFLOW, 1)]
