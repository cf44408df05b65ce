"""Key last usage, folded from the committed audit facts (``EventLog.subscribe_audit``).

Rules: only a successful call (no error code) of a tracked cryptographic operation counts,
for every key ARN its fact names (ReEncrypt names both of its keys); facts arrive in seq
order, so the last one folded is the last use; a key's entry goes when it is deleted.
Tracking starts with the log's first fact, and starts again after a ``--dev`` wipe.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from kms.domain import events as ev
from kms.store import snapshot as snap

# KeyLastUsageTrackingOperation in the botocore model: the operations GetKeyLastUsage reports.
TRACKED_OPERATIONS = frozenset({
    "Decrypt", "DeriveSharedSecret", "Encrypt", "GenerateDataKey", "GenerateDataKeyPair",
    "GenerateDataKeyPairWithoutPlaintext", "GenerateDataKeyWithoutPlaintext", "GenerateMac",
    "ReEncrypt", "Sign", "Verify", "VerifyMac", "Encapsulate", "Decapsulate",
})


@dataclass(frozen=True, slots=True)
class LastUse:
    operation: str
    at_ms: int
    request_id: str
    record_seq: int  # the audit fact's position in the log: its record id


@dataclass(frozen=True, slots=True)
class UsageSnapshot:
    last: dict[str, LastUse]
    tracking_since_ms: int | None


class KeyUsage:
    """key ARN -> its last successful cryptographic use; an audit subscriber."""

    snapshot_name = "usage"
    snapshot_type = UsageSnapshot

    def __init__(self) -> None:
        self.last: dict[str, LastUse] = {}
        self.tracking_since_ms: int | None = None  # the first audit fact's time

    def __call__(self, envelopes: Sequence[ev.Envelope] | None) -> None:
        if envelopes is None:
            self.last.clear()
            self.tracking_since_ms = None
            return
        for env in envelopes:
            if self.tracking_since_ms is None:
                self.tracking_since_ms = env.at_ms
            fact = env.event
            if not isinstance(fact, ev.ApiCallRecorded) or fact.error_code:
                continue
            if fact.event_type == "AwsServiceEvent" and fact.operation == "DeleteKey":
                for arn in fact.resources:  # the key is gone; so is its entry
                    self.last.pop(arn, None)
            elif fact.event_type == "AwsApiCall" and fact.operation in TRACKED_OPERATIONS:
                use = LastUse(fact.operation, env.at_ms, fact.request_id, env.seq)
                for arn in fact.resources:
                    self.last[arn] = use

    def snapshot(self) -> Any:
        return snap.dump(UsageSnapshot(self.last, self.tracking_since_ms))

    def restore(self, data: Any) -> None:
        s: UsageSnapshot = snap.load(UsageSnapshot, data)
        self.last.clear()
        self.last.update(s.last)
        self.tracking_since_ms = s.tracking_since_ms

    def tracking_start_ms(self, created_at_ms: int) -> int:
        """The later of the key's creation and the start of tracking."""
        return max(created_at_ms, self.tracking_since_ms or created_at_ms)
