"""Audit record ids: the CloudTrail ``eventID`` of the record an audit fact becomes.

Rules: derived only from what the log stores (the fact's request id and seq), so the same
record read twice has the same id; UUID-shaped, as CloudTrail's are.
"""

from __future__ import annotations

import hashlib
import uuid


def event_id(request_id: str, seq: int) -> str:
    digest = hashlib.sha256(f"kms-audit-event\x00{request_id}\x00{seq}".encode()).digest()
    return str(uuid.UUID(bytes=digest[:16], version=4))
