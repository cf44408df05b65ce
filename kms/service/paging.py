"""Limit/Marker/Truncated pagination over an ordered list, as every List* op does it.

Rules: items come sorted by their position key; a marker is the position of the
next item, so a page walk survives deletions; a marker of the wrong shape is
InvalidMarkerException; the documented Limit
range of each operation is enforced with the model's ValidationException text.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from kms.domain.errors import InvalidMarkerException, ValidationException

T = TypeVar("T")


def page(items: Sequence[T], params: dict[str, Any], position: Callable[[T], str], *,
         default: int, maximum: int,
         valid: Callable[[str], bool] = bool) -> tuple[list[T], dict[str, Any]]:
    limit = params.get("Limit", default)
    if limit > maximum:
        raise ValidationException(
            f"1 validation error detected: Value '{limit}' at 'limit' failed to satisfy "
            f"constraint: Member must have value less than or equal to {maximum}"
        )
    start = 0
    marker = params.get("Marker")
    if marker is not None:
        if not valid(marker):
            raise InvalidMarkerException("The marker is not valid.")
        start = next((n for n, i in enumerate(items) if position(i) >= marker), len(items))
    chunk = list(items[start : start + limit])
    rest = start + limit < len(items)
    tail: dict[str, Any] = {"Truncated": rest}
    if rest:
        tail["NextMarker"] = position(items[start + limit])
    return chunk, tail
