"""The key-last-usage projection (kms.store.usage) folded from audit envelopes: what counts,
what does not, deletion and a --dev wipe."""

from __future__ import annotations

from kms.domain import events as ev
from kms.store.usage import KeyUsage

ARN = "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"


def fact(seq: int, operation: str, *, error: str = "", kind: str = "AwsApiCall",
         at_ms: int | None = None) -> ev.Envelope:
    recorded = ev.ApiCallRecorded(
        request_id=f"r{seq}", operation=operation, principal_arn="p", account="a",
        access_key_id="k", source_ip="", user_agent="", read_only=True, resources=(ARN,),
        error_code=error, event_type=kind)
    return ev.Envelope(seq, "audit", seq, "us-east-1", seq, at_ms or seq * 1000, recorded)


def test_only_successful_tracked_calls_count_and_the_last_wins() -> None:
    usage = KeyUsage()
    usage([fact(1, "CreateKey"), fact(2, "Encrypt"), fact(3, "Decrypt"),
           fact(4, "Decrypt", error="InvalidCiphertextException"), fact(5, "DescribeKey"),
           fact(6, "RotateKey", kind="AwsServiceEvent")])

    last = usage.last[ARN]
    assert (last.operation, last.request_id, last.record_seq, last.at_ms) == (
        "Decrypt", "r3", 3, 3000)
    assert usage.tracking_start_ms(500) == 1000 and usage.tracking_start_ms(9000) == 9000


def test_a_deleted_key_and_a_wipe_forget() -> None:
    usage = KeyUsage()
    usage([fact(1, "Sign"), fact(2, "DeleteKey", kind="AwsServiceEvent")])
    assert ARN not in usage.last

    usage([fact(3, "Verify")])
    usage(None)

    assert usage.last == {} and usage.tracking_since_ms is None
    usage([fact(9, "Encapsulate", at_ms=77)])
    assert usage.tracking_since_ms == 77 and usage.last[ARN].operation == "Encapsulate"
