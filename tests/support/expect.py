"""Assertions shared by the API tests: an AWS error with its code, message and status."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from botocore.exceptions import ClientError


def refused(call: Any, code: str, message: str | None = None, status: int = 400,
            **params: Any) -> dict[str, Any]:
    """Call, expect an AWS error with this code (and exact message); return the response."""
    with pytest.raises(ClientError) as info:
        call(**params)
    response: dict[str, Any] = info.value.response
    assert response["Error"]["Code"] == code, response["Error"]
    if message is not None:
        assert response["Error"]["Message"] == message, response["Error"]
    assert response["ResponseMetadata"]["HTTPStatusCode"] == status
    return response


def refused_message(call: Any, code: str, message: str | None = None, **params: Any) -> str:
    """The same, returning the error message."""
    return str(refused(call, code, message, **params)["Error"]["Message"])


def advance(server: Any, seconds: float) -> float:
    """Move a dev node's clock (the scheduler runs before it answers); returns its now."""
    return float(server.post("/_kms/clock", {"advance_seconds": seconds})["now"])


def eventually(check: Callable[[], Any], what: str, deadline_s: float = 60.0) -> Any:
    """Poll ``check`` until it returns something truthy (replication is asynchronous); a
    ClientError counts as not yet. Waits on the condition, bounded by ``deadline_s`` (a
    bound for a stuck run, not a timing assertion: generous, so a loaded CI machine, where a
    restarted peer's follower may back off for seconds, does not fail a correct run)."""
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            got = check()
        except ClientError:
            got = None
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)
