"""The replication read between peers as it travels: its path and limits, a row as JSON.

Rules: ``GET /_kms/replication`` (``REPLICATION_PATH``) answers at most ``LIMIT_MAX`` rows
(``LIMIT_DEFAULT`` unless asked) and holds a read open for at most ``WAIT_MAX`` seconds; a
row's body travels base64, exactly as stored (material in it is only ever sealed to a
receiving region); a row that does not decode is ``PeerAnswerInvalid``, as is any answer
that is not what a kms node serves. An error is JSON ``{"__type", "message"}``. Both sides
use this module: the serving node (regions.peer_serving) and its followers
(regions.peer_following).
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

import aiohttp
from aiohttp import web

from kms.store.replication import ReplicatedRow
from regions import peer_auth

PEER_REGION_HEADER = peer_auth.REGION_HEADER
REPLICATION_PATH = "/_kms/replication"
WAIT_MAX = 20.0  # seconds a replication read may be held open
LIMIT_DEFAULT, LIMIT_MAX = 500, 1000


class PeerAnswerInvalid(ValueError):
    """A peer's answer is not what a kms node serves."""


async def _message(reply: aiohttp.ClientResponse) -> str:
    """The message of a peer's JSON error, or the start of its body."""
    text = (await reply.text())[:500]
    try:
        doc = json.loads(text)
        return str(doc["message"])[:500]
    except (ValueError, KeyError, TypeError):
        return f"HTTP {reply.status}: {text[:200]}"


def _bad(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"__type": code, "message": message}, status=status)


def row_json(row: ReplicatedRow) -> dict[str, Any]:
    return {"origin_seq": row.origin_seq, "stream": row.stream, "type_name": row.type_name,
            "at_ms": row.at_ms, "body": base64.b64encode(row.body).decode("ascii")}


def row_from_json(doc: Any) -> ReplicatedRow:
    try:
        return ReplicatedRow(int(doc["origin_seq"]), str(doc["stream"]), str(doc["type_name"]),
                             int(doc["at_ms"]), base64.b64decode(doc["body"], validate=True))
    except (KeyError, TypeError, ValueError, binascii.Error) as exc:
        raise PeerAnswerInvalid(f"a replicated row is malformed: {exc}") from None
