"""The log's row and its hash chain: each row's hash covers the hash before it.

Rules: no I/O here; a stored row that does not match the chain, or will not decode, is
``LogCorrupted``, and the node refuses to serve from it. ``kms.store.log`` re-exports
these names; the rest of the code imports them from there.
"""

from __future__ import annotations

import hashlib
import struct

AUDIT_STREAM = "audit"
GENESIS = b"\x00" * 32

# seq, stream, version, type, origin_region, origin_seq, at_ms, body, prev_hash, hash
_Row = tuple[int, str, int, str, str, int, int, bytes, bytes, bytes]


class LogCorrupted(Exception):
    """A stored row does not match the hash chain or cannot be decoded, or the store
    can no longer be trusted to match the in-memory heads (the writer stops)."""


def row_hash(prev: bytes, seq: int, stream: str, version: int, type_name: str,
             origin_region: str, origin_seq: int, at_ms: int, body: bytes) -> bytes:
    head = f"{stream}\x00{type_name}\x00{origin_region}".encode()
    return hashlib.sha256(
        prev + struct.pack(">QQQq", seq, version, origin_seq, at_ms) + head + b"\x00" + body
    ).digest()
