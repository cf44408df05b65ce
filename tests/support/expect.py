"""Assertions shared by the API tests: an AWS error with its code, message and status."""

from __future__ import annotations

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
