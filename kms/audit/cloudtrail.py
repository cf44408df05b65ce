"""CloudTrail records, derived from the audit facts in the log (nothing is written elsewhere).

Rules: ``cloudtrail_record`` is pure (a fact and where it sits in, a record out), so the
stream, the export and the tests read the same record; ``requestParameters`` keep only the
members the botocore model neither marks ``sensitive`` nor types as a blob (no plaintext,
ciphertext, key material, public key, MAC or signature ever); crypto operations log
``responseElements: null``, as AWS does. A cross-account call gives one record per account
(``fact_records``): the key owner's (eventID ``event_id``, the one GetKeyLastUsage names) and
the caller's, each with its recipientAccountId, both with the same sharedEventID.
"""

from __future__ import annotations

import functools
import hashlib
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from kms.audit.ids import event_id
from kms.domain import events as ev

if TYPE_CHECKING:
    from kms.store.log import EventLog

EVENT_VERSION = "1.11"
EVENT_SOURCE = "kms.amazonaws.com"
AWS_INTERNAL = "AWS Internal"
# Operations whose response AWS never logs (cryptographic ones, and those answering with
# public keys, policies or import tokens).
NO_RESPONSE_ELEMENTS = frozenset({
    "Encrypt", "Decrypt", "ReEncrypt", "GenerateDataKey", "GenerateDataKeyWithoutPlaintext",
    "GenerateDataKeyPair", "GenerateDataKeyPairWithoutPlaintext", "GenerateRandom", "Sign",
    "Verify", "GenerateMac", "VerifyMac", "DeriveSharedSecret", "Encapsulate", "Decapsulate",
    "GetPublicKey", "GetKeyPolicy", "GetParametersForImport",
})
_DATE_MEMBERS = frozenset({"creationDate", "deletionDate", "validTo", "rotationDate"})
# Bearer authorization a grant gives out: kept out of records although the model does not
# mark it sensitive (whoever holds a grant token may use the grant).
_BEARER = frozenset({"GrantToken", "GrantTokens"})


# -- what may be logged of a request, from the botocore model ---------------------------
@functools.cache
def _model() -> dict[str, Any]:
    from botocore.loaders import Loader

    model: dict[str, Any] = Loader().load_service_model("kms", "service-2")
    return model


@functools.cache
def _hidden(shape_name: str) -> frozenset[str]:
    """Members of a structure shape never logged: sensitive (on the member or its shape) or
    blobs. A nested structure's own hidden members are found by ``_scrub`` as it descends."""
    shapes = _model()["shapes"]
    shape = shapes.get(shape_name, {})
    out = set(_BEARER)
    for name, member in shape.get("members", {}).items():
        target = shapes.get(member["shape"], {})
        if member.get("sensitive") or target.get("sensitive") or target.get("type") == "blob":
            out.add(name)
    return frozenset(out)


def _member_shape(shape_name: str, member: str) -> str | None:
    shape = _model()["shapes"].get(shape_name, {})
    m = shape.get("members", {}).get(member)
    return m["shape"] if m else None


def _scrub(value: Any, shape_name: str | None) -> Any:
    shapes = _model()["shapes"]
    shape = shapes.get(shape_name or "", {})
    kind = shape.get("type")
    if isinstance(value, bytes | bytearray):
        return None
    if kind == "structure" and isinstance(value, dict):
        hidden = _hidden(shape_name or "")
        return {k: _scrub(v, _member_shape(shape_name or "", k)) for k, v in value.items()
                if k not in hidden and not isinstance(v, bytes | bytearray)}
    if kind == "list" and isinstance(value, list):
        inner = shape["member"]["shape"]
        return [_scrub(v, inner) for v in value if not isinstance(v, bytes | bytearray)]
    if kind == "map" and isinstance(value, dict):
        inner = shape["value"]["shape"]
        return {k: _scrub(v, inner) for k, v in value.items()
                if not isinstance(v, bytes | bytearray)}
    if isinstance(value, dict):  # not in the model (an unknown operation): keep no secrets
        return {k: _scrub(v, None) for k, v in value.items()
                if not isinstance(v, bytes | bytearray)}
    if isinstance(value, list):
        return [_scrub(v, None) for v in value if not isinstance(v, bytes | bytearray)]
    return value


_INPUTS: dict[str, tuple[str | None, frozenset[str]]] = {}  # per model operation only
_NO_INPUT: tuple[str | None, frozenset[str]] = (None, frozenset())


def _input_of(operation: str) -> tuple[str | None, frozenset[str]]:
    """An operation's input shape and its members never logged, looked up once per model
    operation (an unknown name, which a client chooses, is never kept)."""
    got = _INPUTS.get(operation)
    if got is None:
        op = _model()["operations"].get(operation)
        if op is None:
            return _NO_INPUT
        shape = op["input"]["shape"] if "input" in op else None
        got = _INPUTS[operation] = (shape, _hidden(shape) if shape else frozenset())
    return got


# A scalar member is kept as it is whatever its shape (``_scrub`` and ``_camel_keys`` only
# descend into dicts and lists, and drop bytes): no model walk for KeyId and its kind.
_KEPT_AS_IS = frozenset({str, int, float, bool})


def loggable_params(operation: str, params: dict[str, Any]) -> dict[str, Any]:
    """A request's members (PascalCase, as parsed) as the audit fact keeps them: camelCase,
    without any member the model marks sensitive or types as a blob, at any depth."""
    shape, hidden = _input_of(operation)
    out: dict[str, Any] = {}
    for name, value in params.items():
        if name in hidden or isinstance(value, bytes | bytearray):
            continue
        if type(value) in _KEPT_AS_IS:
            out[_camel(name)] = value
            continue
        out[_camel(name)] = _camel_keys(_scrub(value, _member_shape(shape, name)
                                               if shape else None), name)
    return out


def loggable_response(operation: str, result: dict[str, Any] | None) -> dict[str, Any]:
    """A management call's answer as ``responseElements`` will show it (camelCase, no blobs,
    nothing sensitive); empty for the operations whose responses AWS never logs."""
    if not result or operation in NO_RESPONSE_ELEMENTS:
        return {}
    op = _model()["operations"].get(operation)
    shape = op["output"]["shape"] if op and "output" in op else None
    hidden = _hidden(shape) if shape else frozenset()
    return {_camel(k): _camel_keys(_scrub(v, _member_shape(shape, k) if shape else None), k)
            for k, v in result.items()
            if k not in hidden and not isinstance(v, bytes | bytearray)}


def _camel(name: str) -> str:
    return name[:1].lower() + name[1:]


# Maps whose keys are the user's (encryption context, tags as a map): never recased.
_USER_KEYED = frozenset({"EncryptionContext", "EncryptionContextSubset",
                         "EncryptionContextEquals"})


def _camel_keys(value: Any, member: str = "") -> Any:
    if member in _USER_KEYED:
        return value
    if isinstance(value, dict):
        return {_camel(k): _camel_keys(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_camel_keys(v, member) for v in value]
    return value


# -- the record ---------------------------------------------------------------------------
# CloudTrail writes a refusal by authorization as "AccessDenied", not the API's exception
# name (the client still gets AccessDeniedException); other codes are the API's own.
CLOUDTRAIL_ERROR_CODES = {"AccessDeniedException": "AccessDenied"}


def cloudtrail_record(fact: ev.ApiCallRecorded, *, seq: int, at_ms: int, region: str,
                      recipient_account: str, shared: bool | None = None) -> dict[str, Any]:
    """The CloudTrail record of one audit fact at ``seq`` (its eventID: ``event_id``) as
    ``recipient_account`` receives it; ``shared``: whether it carries a sharedEventID
    (default: when the caller is of another account)."""
    service = fact.event_type == "AwsServiceEvent"
    account = recipient_account
    source, name = EVENT_SOURCE, fact.operation
    # kms.api.sts's facts; a KMS call's fact, whatever its target said, has a KMS error
    # code, and every one of those ends in "Exception" (STS's never do).
    if name.startswith("sts:") and not fact.error_code.endswith("Exception"):
        source, name = "sts.amazonaws.com", name[4:]
    record: dict[str, Any] = {
        "eventVersion": EVENT_VERSION,
        "userIdentity": _service_identity(account) if service
        else user_identity(fact, recipient_account),
        "eventTime": _iso(at_ms),
        "eventSource": source,
        "eventName": name,
        "awsRegion": region,
        "sourceIPAddress": AWS_INTERNAL if service else _source_of(fact),
        "userAgent": AWS_INTERNAL if service else _agent_of(fact),
    }
    if fact.error_code:
        record["errorCode"] = CLOUDTRAIL_ERROR_CODES.get(fact.error_code, fact.error_code)
        record["errorMessage"] = fact.error_message
    record["requestParameters"] = None if service else _request_parameters(fact)
    record["responseElements"] = _response_elements(fact)
    if fact.additional:
        record["additionalEventData"] = dict(fact.additional)
    record["requestID"] = fact.request_id
    record["eventID"] = event_id(fact.request_id, seq)
    record["readOnly"] = fact.read_only
    record["resources"] = [{"accountId": _arn_account(arn) or account, "type": "AWS::KMS::Key",
                            "ARN": arn} for arn in fact.resources]
    record["eventType"] = fact.event_type
    record["managementEvent"] = True
    record["recipientAccountId"] = account
    if shared if shared is not None else (not service and _cross_account(fact,
                                                                       recipient_account)):
        record["sharedEventID"] = _shared_event_id(fact.request_id)
    if service:
        details: dict[str, Any] = {"keyId": _key_id(fact.resources[0])} if fact.resources \
            else {}
        if fact.operation == "RotateKey":
            details["rotationType"] = "AUTOMATIC"
        record["serviceEventDetails"] = details
    record["eventCategory"] = "Management"
    return record


def recipients(fact: ev.ApiCallRecorded, default_account: str) -> list[str]:
    """The accounts a fact's record is delivered to: the owners of the keys it names, then
    the caller's account if another (a cross-account call); ``default_account`` (the node's)
    when it names neither (a caller never authenticated, say)."""
    out: list[str] = []
    for account in map(_arn_account, fact.resources):
        if account and account not in out:
            out.append(account)
    if fact.event_type != "AwsServiceEvent" and fact.account and fact.account not in out:
        out.append(fact.account)
    return out or [default_account]


def fact_records(fact: ev.ApiCallRecorded, *, seq: int, at_ms: int, region: str,
                 default_account: str) -> list[dict[str, Any]]:
    """Every record of one fact, one per recipient account (``recipients``): the first keeps
    eventID ``event_id(request_id, seq)``; the others get their own eventID, and all of them
    the same sharedEventID when there are several."""
    accounts = recipients(fact, default_account)
    shared = len(accounts) > 1
    out = []
    for i, account in enumerate(accounts):
        record = cloudtrail_record(fact, seq=seq, at_ms=at_ms, region=region,
                                   recipient_account=account, shared=shared)
        if i:
            record["eventID"] = account_event_id(fact.request_id, seq, account)
        out.append(record)
    return out


def account_event_id(request_id: str, seq: int, account: str) -> str:
    """The eventID of a fact's record in a recipient account other than its first."""
    digest = hashlib.sha256(
        f"kms-audit-event\x00{request_id}\x00{seq}\x00{account}".encode()).digest()
    return str(uuid.UUID(bytes=digest[:16], version=4))


def records(envelopes: Sequence[ev.Envelope], region: str, account: str,
            ) -> list[tuple[int, dict[str, Any]]]:
    """(seq, record) of each audit fact among ``envelopes``, every recipient's record
    (``account``: the node's, for a fact that names no account)."""
    return [(e.seq, r) for e in envelopes if isinstance(e.event, ev.ApiCallRecorded)
            for r in fact_records(e.event, seq=e.seq, at_ms=e.at_ms, region=region,
                                  default_account=account)]


def user_identity(fact: ev.ApiCallRecorded, recipient_account: str) -> dict[str, Any]:
    """CloudTrail's ``userIdentity`` for the caller a fact names."""
    if fact.principal_arn in ("", "anonymous") or not fact.account:
        ident: dict[str, Any] = {"type": "Unknown"}  # authentication failed or never ran
        if fact.access_key_id:
            ident["accessKeyId"] = fact.access_key_id
        return ident
    kind = fact.principal_type or "Root"
    if kind == "AWSService":  # a service principal's own call, as CloudTrail names it
        return {"type": "AWSService", "invokedBy": fact.principal_arn}
    if _cross_account(fact, recipient_account):  # the owner's record names only the account
        ident = {"type": "AWSAccount", "principalId": fact.user_id or fact.account,
                 "accountId": fact.account}
        if fact.access_key_id:
            ident["accessKeyId"] = fact.access_key_id
        return ident
    ident = {"type": kind, "principalId": fact.user_id or fact.account,
             "arn": fact.principal_arn, "accountId": fact.account}
    if fact.access_key_id:
        ident["accessKeyId"] = fact.access_key_id
    if kind == "IAMUser":
        ident["userName"] = fact.principal_arn.rsplit("/", 1)[-1]
    elif kind == "AssumedRole":
        # arn:aws:sts::ACCOUNT:assumed-role/ROLE/SESSION -> the role that issued it
        parts = fact.principal_arn.split(":", 5)[-1].split("/")
        role = parts[1] if len(parts) > 2 else parts[-1]
        ident["sessionContext"] = {
            "sessionIssuer": {"type": "Role",
                              "principalId": (fact.user_id or "").split(":", 1)[0],
                              "arn": f"arn:aws:iam::{fact.account}:role/{role}",
                              "accountId": fact.account, "userName": role},
            "attributes": {"mfaAuthenticated": "false"},
        }
    return ident


def _source_of(fact: ev.ApiCallRecorded) -> str | None:
    """sourceIPAddress: the caller's address, or the service principal's name for a call an
    AWS service made itself (as CloudTrail writes ``logs.amazonaws.com``)."""
    if fact.principal_type == "AWSService":
        return fact.principal_arn
    return fact.source_ip or None


def _agent_of(fact: ev.ApiCallRecorded) -> str | None:
    if fact.principal_type == "AWSService":
        return fact.principal_arn
    return fact.user_agent or None


def _service_identity(account: str) -> dict[str, Any]:
    return {"accountId": account, "invokedBy": AWS_INTERNAL}


def _request_parameters(fact: ev.ApiCallRecorded) -> dict[str, Any] | None:
    if not fact.params and (fact.operation != "CreateKey" or fact.error_code):
        return None
    params = dict(fact.params)
    if fact.operation in ("Encrypt", "Decrypt") and not fact.error_code:
        # AWS logs the algorithm even when the request left it out (the default's)
        params.setdefault("encryptionAlgorithm", "SYMMETRIC_DEFAULT")
    elif fact.operation == "CreateKey" and not fact.error_code:  # AWS logs the defaults
        spec = params.get("keySpec") or params.get("customerMasterKeySpec") or "SYMMETRIC_DEFAULT"
        params.setdefault("keySpec", spec)
        params.setdefault("customerMasterKeySpec", spec)
        params.setdefault("keyUsage", "ENCRYPT_DECRYPT")
        params.setdefault("origin", "AWS_KMS")
        params.setdefault("bypassPolicyLockoutSafetyCheck", False)
    return params


def _response_elements(fact: ev.ApiCallRecorded) -> dict[str, Any] | None:
    if fact.error_code or not fact.response or fact.operation in NO_RESPONSE_ELEMENTS:
        return None
    return {k: _dates(v, k) for k, v in fact.response.items()}


def _dates(value: Any, name: str) -> Any:
    """Dates inside responseElements as AWS writes them: "Aug 10, 2022, 10:38:27 PM"."""
    if isinstance(value, dict):
        return {k: _dates(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_dates(v, name) for v in value]
    if name in _DATE_MEMBERS and isinstance(value, int | float) and not isinstance(value, bool):
        t = datetime.fromtimestamp(value, UTC)
        return f"{t:%b} {t.day}, {t.year}, {t.hour % 12 or 12}:{t:%M:%S %p}"
    return value


def _iso(at_ms: int) -> str:
    return datetime.fromtimestamp(at_ms // 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _cross_account(fact: ev.ApiCallRecorded, recipient_account: str) -> bool:
    return bool(fact.account) and fact.account != recipient_account


def _shared_event_id(request_id: str) -> str:
    digest = hashlib.sha256(f"kms-audit-shared\x00{request_id}".encode()).digest()
    return str(uuid.UUID(bytes=digest[:16], version=4))


def _arn_account(arn: str) -> str:
    parts = arn.split(":")
    return parts[4] if len(parts) > 5 else ""


def _key_id(arn: str) -> str:
    return arn.rsplit("/", 1)[-1]


async def read_records(log: EventLog, after_seq: int, limit: int, *,
                       account: str | None = None, default_account: str = "",
                       ) -> tuple[list[tuple[int, dict[str, Any]]], int]:
    """The CloudTrail records of the committed audit facts after ``after_seq`` (at most
    ``limit`` facts), and the seq the answer is complete up to. Each fact gives one record
    per recipient account (``fact_records``); ``account`` keeps only that account's view.
    ``default_account``: the recipient of a fact that names no account."""
    envelopes, through = await log.read_audit(after_seq, limit)
    out = []
    for e in envelopes:
        fact = e.event
        if not isinstance(fact, ev.ApiCallRecorded):
            continue
        out += [(e.seq, r) for r in fact_records(fact, seq=e.seq, at_ms=e.at_ms,
                                                 region=log.region,
                                                 default_account=default_account)
                if account is None or r["recipientAccountId"] == account]
    return out, through
