"""GetKeyLastUsage: the last successful cryptographic operation on a key, from the log.

Rules: answered from ``Service.usage`` (folded from committed audit facts, so it is the
same after a restart); key id or key ARN only, never an alias; no key state refuses it.
``CloudTrailEventId`` is the eventID of the audit record the call left (kms.audit.ids).
"""

from __future__ import annotations

from typing import Any

from kms.audit.ids import event_id
from kms.service.core import Call, Service, operation
from kms.service.views import seconds


@operation("GetKeyLastUsage", read_only=True)
async def get_key_last_usage(svc: Service, call: Call, p: dict[str, Any]) -> dict[str, Any]:
    key = svc.key_for(call, p["KeyId"], "GetKeyLastUsage", allow_alias=False)
    use = svc.usage.last.get(key.arn)
    last: dict[str, Any] = {}
    if use is not None:
        last = {"Operation": use.operation, "Timestamp": seconds(use.at_ms),
                "CloudTrailEventId": event_id(use.request_id, use.record_seq),
                "KmsRequestId": use.request_id}
    return {"KeyId": key.key_id, "KeyLastUsage": last,
            "TrackingStartDate": seconds(svc.usage.tracking_start_ms(key.created_at_ms)),
            "KeyCreationDate": seconds(key.created_at_ms)}
