"""The service of one region: every API call goes load -> authorize -> decide ->
append (state events and the audit fact in one transaction) -> reply.

Rules: a handler never writes; it records what it read (``Call.seen``) and what it
decided (``Call.emit``). The dispatcher appends, retries a decision whose streams
moved, and fails closed: no durable audit fact, no answer.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

from kms.audit.cloudtrail import loggable_params, loggable_response
from kms.clock import Clock
from kms.crypto import asymmetric, mac, symmetric
from kms.crypto.keyring import NOTHING_STAGED, Keyring
from kms.domain import events as ev
from kms.domain import policy
from kms.domain.errors import (
    RECORD_FAILED,
    ConflictingWrite,
    KMSError,
    KMSInternalException,
    NotFoundException,
    UnsupportedOperationException,
)
from kms.domain.ids import AWS_ALIAS_PREFIX, KeyRef, alias_arn, parse_key_ref
from kms.domain.key import Key, check_state
from kms.domain.key import apply as apply_key
from kms.domain.key import created as created_key
from kms.domain.specs import SYMMETRIC
from kms.service import authz, grant_access
from kms.store.grants import Grants
from kms.store.log import AUDIT_STREAM, Append, EventLog, VaultChange
from kms.store.state import State, key_stream
from kms.store.usage import KeyUsage

log = structlog.get_logger("kms.service")

MAX_DECISION_ATTEMPTS = 8
AUDITED_MESSAGE = 1024  # the client gets the whole echoed value; the audit fact a bounded one


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling, as authentication established it."""

    principal_arn: str
    account: str
    access_key_id: str
    source_ip: str = ""
    user_agent: str = ""
    # What the policy engine and CloudTrail's userIdentity need beyond the ARN:
    principal_type: str = "Root"  # Root | IAMUser | AssumedRole | AWSAccount | AWSService
    user_id: str = ""  # aws:userid (principalId)
    tags: tuple[tuple[str, str], ...] = ()  # aws:PrincipalTag/*
    identity_policies: tuple[str, ...] = ()  # the principal's IAM policy documents (JSON)
    via_service: str = ""  # kms:ViaService (--dev: the X-Kms-Via-Service header)
    secure_transport: bool = False  # aws:SecureTransport
    identity_arn: str = ""  # the IAM entity (a role's own ARN, path included), else the ARN
    # The region node that forwarded this request here ("": it came from the client itself).
    # The connection is then the forwarder's, so aws:SourceIp and aws:SecureTransport are
    # absent from the request context (fail closed) rather than the forwarder's.
    forwarded_by: str = ""
    source_arn: str = ""  # aws:SourceArn (--dev: the X-Kms-Source-Arn header)


@dataclass(slots=True)
class Call:
    """One attempt at one API call: what it read and what it decided."""

    request_id: str
    operation: str
    caller: Caller
    at_ms: int
    params: dict[str, Any]
    resources: list[str] = field(default_factory=list)
    seen: dict[str, int] = field(default_factory=dict)
    appends: list[Append] = field(default_factory=list)
    additional: dict[str, Any] = field(default_factory=dict)
    vault: list[VaultChange] = field(default_factory=list)
    staged: dict[str, Key] = field(default_factory=dict)  # AWS managed keys born with this call
    service: Service | None = None  # the region's service deciding it (authz reads its state)
    result: dict[str, Any] | None = None  # the answer, for the audit fact's responseElements

    @property
    def staged_keks(self) -> Mapping[str, bytes]:
        """The KEKs this call creates (vault id -> wrapped), from ``vault``: the one source
        the keyring reads an uncommitted KEK from, gone with the call. A call that stages
        nothing (most) gets the shared empty mapping, nothing built."""
        if not self.vault:
            return NOTHING_STAGED
        staged: dict[str, bytes] = {}
        for change in self.vault:
            if change.wrapped is None:
                staged.pop(change.key_id, None)
            else:
                staged[change.key_id] = change.wrapped
        return staged

    def emit(self, stream: str, events: list[ev.Event]) -> None:
        if events:
            self.appends.append(Append(stream, tuple(events), self.seen.get(stream, 0)))


AWS_INTERNAL = Caller("AWS Internal", "", "")
# Services that own an AWS managed key (alias/aws/<service>); other names are not created.
AWS_MANAGED_SERVICES = frozenset({
    "acm", "backup", "cloudtrail", "codeartifact", "codecommit", "dynamodb", "ebs", "ecr",
    "elasticfilesystem", "es", "fsx", "glue", "kafka", "kinesis", "kinesisvideo", "lambda",
    "lightsail", "rds", "redshift", "s3", "secretsmanager", "sns", "sqs", "ssm", "timestream",
    "xray",
})
# Operations that take an alias for the key they use, and so may create one on first use.
USES_AWS_MANAGED_KEYS = frozenset({
    "DescribeKey", "Encrypt", "Decrypt", "ReEncrypt", "GenerateDataKey",
    "GenerateDataKeyWithoutPlaintext", "GenerateDataKeyPair",
    "GenerateDataKeyPairWithoutPlaintext",
})


# The ViaService of an AWS managed key's service where it differs from the alias's name.
_VIA_SERVICE = {"ebs": "ec2"}


def aws_managed_policy(account: str, service: str, region: str) -> str:
    """The policy AWS writes for its managed keys: use only through the service, by any
    principal of the account (kms:CallerAccount + kms:ViaService); metadata reads (and
    RevokeGrant) for the account directly. Printed as KMS prints the policies it writes."""
    name = service.upper()
    via = f"{_VIA_SERVICE.get(service, service)}.{region}.amazonaws.com"
    return policy.aws_text({
        "Version": "2012-10-17", "Id": f"auto-{service}-2",
        "Statement": [
            {"Sid": f"Allow access through {name} for all principals in the account that are "
                    f"authorized to use {name}",
             "Effect": "Allow", "Principal": {"AWS": "*"},
             "Action": ["kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*",
                        "kms:CreateGrant", "kms:DescribeKey"],
             "Resource": "*",
             "Condition": {"StringEquals": {"kms:CallerAccount": account,
                                            "kms:ViaService": via}}},
            {"Sid": "Allow direct access to key metadata to the account", "Effect": "Allow",
             "Principal": {"AWS": f"arn:aws:iam::{account}:root"},
             "Action": ["kms:Describe*", "kms:Get*", "kms:List*", "kms:RevokeGrant"],
             "Resource": "*"},
        ],
    })


Handler = Callable[["Service", Call, dict[str, Any]], Awaitable[dict[str, Any] | None]]


@dataclass(frozen=True, slots=True)
class Operation:
    name: str
    handler: Handler
    read_only: bool


OPERATIONS: dict[str, Operation] = {}


def operation(name: str, *, read_only: bool) -> Callable[[Handler], Handler]:
    """Register a handler in the one table the API routes by."""

    def register(fn: Handler) -> Handler:
        OPERATIONS[name] = Operation(name, fn, read_only)
        return fn

    return register


class RegionDirectory(Protocol):
    """The multi-region layer as the service sees it (implemented in ``regions``)."""

    async def identity_public_key(self, region: str) -> bytes | None:
        """The X25519 identity public key of ``region``, to seal material to it; None when
        this node cannot replicate to that region."""

    def unreachable_reason(self, region: str) -> str | None:
        """Why this node cannot replicate to ``region`` (after a None above), if it knows:
        a sentence that follows "Unable to replicate key K to region R: "."""


class Service:
    def __init__(self, *, region: str, account: str, log_: EventLog, keyring: Keyring,
                 clock: Clock) -> None:
        self.region = region
        self.account = account
        self.log = log_
        self.keyring = keyring
        self.clock = clock
        self.state = State()
        log_.subscribe(self.state)
        log_.subscribe(keyring.committed)  # deletions drop their cached material
        self.grants = Grants()  # this region's live grants (streams grants/<key id>)
        log_.subscribe(self.grants)
        self.usage = KeyUsage()
        log_.subscribe_audit(self.usage)  # GetKeyLastUsage, rebuilt from the log at start
        self.supported_specs = frozenset({SYMMETRIC, *mac.HMAC_SPECS, *asymmetric.SUPPORTED_SPECS})
        self.regions: RegionDirectory | None = None  # set by the multi-region layer

    def new_kek(self, call: Call, vault_id: str) -> None:
        """A new key-encryption key for vault entry ``vault_id`` (a new key's own, or an
        imported material's), vaulted with the call. Until the call commits, its wrapped
        form in ``call.vault`` is its only copy (the keyring reads it through
        ``call.staged_keks``): a refused or dry-run call leaves nothing behind, in the
        vault or in the keyring."""
        call.vault.append(VaultChange(vault_id, self.keyring.new_kek(vault_id)))

    @staticmethod
    def symmetric_material() -> bytes:
        return symmetric.new_material()

    async def new_material(self, call: Call, key_id: str, key_spec: str) -> ev.Material:
        """Generate and seal the first material of a new key (RSA in a worker thread),
        under the KEK ``new_kek`` staged in this call."""
        if key_spec == SYMMETRIC:
            raw, public = symmetric.new_material(), b""
        elif key_spec in mac.HMAC_SPECS:
            raw, public = mac.new_hmac_key(key_spec), b""
        else:
            raw, public = await asyncio.to_thread(asymmetric.generate, key_spec)
        return self.keyring.seal(key_id, raw, public, staged=call.staged_keks)

    def private_key(self, call: Call, key: Key, material: ev.Material) -> Any:
        """The parsed private key of an asymmetric material, cached by the keyring (unless
        its KEK is staged by ``call``)."""
        return self.keyring.loaded(key.key_id, material,
                                   lambda der: asymmetric.load_private(der, trusted=True),
                                   staged=call.staged_keks)

    def grants_allow(self, call: Call, action: str, key: Key) -> bool:
        """The grant hook of policy evaluation (kms.service.authz): whether a live grant on
        ``key`` lets this caller do ``kms:<action>`` in this call (grantee, operations,
        encryption-context constraint; tokens in GrantTokens first). Reads the grants
        projection only and pins no stream: creating or ending a grant never makes an
        in-flight cryptographic call decide again."""
        return bool(grant_access.allowing_grants(self.grants, self.region, call, action, key))

    # -- loading, with what the decision saw ------------------------------------------------
    def resolve(self, call: Call, raw: str, *, allow_alias: bool) -> Key:
        """Find the key a KeyId parameter names; record its stream version and ARN."""
        ref = parse_key_ref(raw, self.region, self.account, allow_alias=allow_alias)
        key = self._lookup(ref, call)
        stream = key_stream(key.key_id)
        call.seen.setdefault(stream, self.log.version(stream))
        if key.arn not in call.resources:
            call.resources.append(key.arn)
        return key

    def _lookup(self, ref: KeyRef, call: Call) -> Key:
        if ref.alias is not None and ref.alias in call.staged:
            return call.staged[ref.alias]
        if ref.alias is not None:
            alias = self.state.aliases.get(ref.alias)
            if alias is None:
                raise NotFoundException(
                    f"Alias {alias_arn(self.region, self.account, ref.alias)} is not found."
                )
            key = self.state.keys.get(alias.key_id)
        else:
            assert ref.key_id is not None
            key = self.state.keys.get(ref.key_id)
        if key is None:
            kid = ref.key_id or ref.raw
            raise NotFoundException(
                f"Key 'arn:aws:kms:{self.region}:{self.account}:key/{kid}' does not exist"
            )
        return key

    def key_for(self, call: Call, raw: str, action: str, *, allow_alias: bool,
                state_rule: str | None = None) -> Key:
        """Resolve, authorize ``kms:<action>`` and check the key-state table in one step."""
        key = self.resolve(call, raw, allow_alias=allow_alias)
        authz.authorize(call, action, key)
        check_state(state_rule or call.operation, key)
        return key

    def managed_key(self, call: Call, raw: str) -> Key:
        """Resolve (by id or ARN) and authorize a key whose operation's domain rules check
        origin and spec before the state table (rotation, deletion, import)."""
        key = self.resolve(call, raw, allow_alias=False)
        authz.authorize(call, call.operation, key)
        return key

    # -- the pipeline -----------------------------------------------------------------------
    async def call(self, operation_name: str, params: dict[str, Any], caller: Caller,
                   request_id: str, resolved: list[str] | None = None) -> dict[str, Any] | None:
        """Decide and record one call. ``resolved`` (if given) receives the ARNs of the keys
        the call resolved, answered or refused, for the request's log line."""
        op = OPERATIONS[operation_name]
        started = time.perf_counter()
        managed = operation_name in USES_AWS_MANAGED_KEYS and caller.account == self.account
        for _ in range(MAX_DECISION_ATTEMPTS):
            c = Call(request_id, operation_name, caller, self.clock.now_ms(), params,
                     service=self)
            try:
                if managed:
                    self._stage_aws_managed(c, params)
                if "GrantTokens" in params and operation_name in grant_access.TOKENS_CHECKED:
                    grant_access.check_tokens(params["GrantTokens"])
                if "Recipient" in params:
                    raise UnsupportedOperationException(
                        "Recipient (attested delivery to an enclave) is not supported by this "
                        "service; the plaintext is never sent in its place."
                    )
                result = await op.handler(self, c, params)
            except KMSError as exc:
                _resolved(resolved, c)
                raise await self._refused(c, op.read_only, exc) from None
            except Exception:
                log.exception("handler_failed", request_id=request_id, operation=operation_name)
                _resolved(resolved, c)
                err = KMSInternalException("An internal error occurred. Try again later.")
                raise await self._refused(c, op.read_only, err) from None
            c.result = result
            try:
                failed = await self._settle(c, op.read_only, None)
            except ConflictingWrite:  # a stream the decision read moved: decide again
                log.info("decided_again", request_id=request_id, op=operation_name)
                continue
            _resolved(resolved, c)
            if failed is not None:
                raise failed from None
            if log.is_enabled_for(logging.DEBUG):  # not even the figures unless it is emitted
                log.debug("decided", request_id=request_id,
                          ms=(time.perf_counter() - started) * 1e3)
            return result
        _resolved(resolved, c)
        err = KMSInternalException("The request conflicted with concurrent changes; retry it.")
        raise await self._refused(c, op.read_only, err) from None

    async def _refused(self, c: Call, read_only: bool, error: KMSError) -> KMSError:
        """Record a refused call; the error to answer with (``error`` unless unrecorded)."""
        return await self._settle(c, read_only, error) or error

    async def _settle(self, c: Call, read_only: bool, error: KMSError | None) -> KMSError | None:
        """Record the call's fact and return the error to answer with (None: success).

        Fails closed: if the fact cannot be written, a bare one (no parameters, no state
        events) is tried, so the answer is still audited; if that fails too, the answer is
        a KMSInternalException and a log line. ConflictingWrite propagates (decide again)."""
        try:
            await self._record(c, read_only, error)
            return error
        except ConflictingWrite:
            raise
        except Exception as exc:
            log.error("audit_failed", request_id=c.request_id, op=printable(c.operation[:128]),
                      reason=_reason(exc))
            cause = exc
        answer = error or KMSInternalException(RECORD_FAILED)
        bare = Call(c.request_id, c.operation, c.caller, c.at_ms, {},
                    resources=list(c.resources))
        try:
            await self._record(bare, read_only, answer)
            return answer
        except Exception as exc:
            log.error("audit_failed", request_id=c.request_id, op=printable(c.operation[:128]),
                      reason=_reason(exc), bare=True)
            cause = exc
        if isinstance(cause, KMSInternalException):  # the log's own words (not writable, ...)
            return cause
        return KMSInternalException(RECORD_FAILED)

    def _stage_aws_managed(self, c: Call, params: dict[str, Any]) -> None:
        """``alias/aws/<service>`` names an AWS managed key that exists from its first use.
        A missing one is created as part of this call: its events go in with the call's,
        so a call that is refused leaves no key behind, and its KEK lives only with the
        call (in ``c.vault``, read through ``c.staged_keks``): never in the keyring's
        caches."""
        for member in ("KeyId", "DestinationKeyId"):
            raw = params.get(member)
            if not isinstance(raw, str) or AWS_ALIAS_PREFIX not in raw:
                continue
            try:
                ref = parse_key_ref(raw, self.region, self.account, allow_alias=True)
            except KMSError:
                continue
            name = ref.alias
            if name is None or name in self.state.aliases or name in c.staged:
                continue
            service = name[len(AWS_ALIAS_PREFIX):]
            if service not in AWS_MANAGED_SERVICES:
                continue
            key_id = str(uuid.uuid4())
            self.new_kek(c, key_id)
            created = ev.KeyCreated(
                key_id=key_id, account=self.account, region=self.region,
                description=f"Default key that protects my {service.upper()} resources when "
                            "no other key is defined",
                key_spec=SYMMETRIC, key_usage="ENCRYPT_DECRYPT", origin="AWS_KMS",
                key_manager="AWS", multi_region=False,
                policy=aws_managed_policy(self.account, service, self.region), tags=(),
                material=self.keyring.seal(key_id, symmetric.new_material(),
                                           staged=c.staged_keks),
            )
            rotation = ev.KeyRotationEnabled(key_id, 365, c.at_ms + 365 * 86_400_000)
            c.emit(key_stream(key_id), [created, rotation])
            c.seen[name] = self.log.version(name)
            c.emit(name, [ev.AliasCreated(name, key_id)])
            c.staged[name] = apply_key(created_key(created, c.at_ms), rotation, c.at_ms)

    async def record_rejected(self, operation_name: str, params: dict[str, Any], caller: Caller,
                              request_id: str, error: KMSError,
                              additional: dict[str, Any] | None = None) -> KMSError:
        """Audit a call refused before it reached a handler (validation, authentication).
        Returns the error to answer with: ``error``, or a KMSInternalException if no audit
        fact could be written (fail closed)."""
        op = OPERATIONS.get(operation_name)
        c = Call(request_id, operation_name[:128], caller, self.clock.now_ms(), params)
        c.additional.update(additional or {})
        return await self._refused(c, op.read_only if op else True, error)

    async def record_beside(self, name: str, params: dict[str, Any], caller: Caller,
                            request_id: str, error: KMSError | None = None,
                            additional: dict[str, Any] | None = None,
                            read_only: bool = True) -> KMSError | None:
        """Audit a read served beside the API (the audit stream): one fact, read-only, no
        state events. The error to answer with (``error``, or one if the fact could not be
        written: fail closed), None for a success recorded. ``read_only`` False: a refused
        write beside the API (``kms region promote``)."""
        c = Call(request_id, name, caller, self.clock.now_ms(), params)
        c.additional.update(additional or {})
        return await self._settle(c, read_only, error)

    async def service_event(self, name: str, key: Key,
                            decide: Callable[[Call, Key], None]) -> bool:
        """Something the node does by itself (a due rotation, deletion or expiry): decided
        and recorded like a call, as an ``AwsServiceEvent``. False if the key moved."""
        c = Call(str(uuid.uuid4()), name, AWS_INTERNAL, self.clock.now_ms(), {"keyId": key.arn})
        stream = key_stream(key.key_id)
        c.seen[stream] = self.log.version(stream)
        c.resources.append(key.arn)
        decide(c, key)
        try:
            await self._record(c, False, None, event_type="AwsServiceEvent")
        except ConflictingWrite:
            return False
        return True

    async def service_action(self, name: str, arn: str, streams: tuple[str, ...],
                             decide: Callable[[Call], None]) -> bool:
        """Like ``service_event`` for what acts on streams that may not exist yet (a
        replica born in this region): the decision sees ``streams`` at their versions now.
        False if one of them moved."""
        c = Call(str(uuid.uuid4()), name, AWS_INTERNAL, self.clock.now_ms(), {"keyId": arn})
        for stream in streams:
            c.seen[stream] = self.log.version(stream)
        c.resources.append(arn)
        decide(c)
        try:
            await self._record(c, False, None, event_type="AwsServiceEvent")
        except ConflictingWrite:
            return False
        return True

    async def _record(self, c: Call, read_only: bool, error: KMSError | None,
                      event_type: str = "AwsApiCall") -> None:
        fact = ev.ApiCallRecorded(
            request_id=c.request_id,
            operation=printable(c.operation),
            principal_arn=c.caller.principal_arn,
            account=c.caller.account,
            access_key_id=printable(c.caller.access_key_id),
            source_ip=c.caller.source_ip,
            user_agent=printable(c.caller.user_agent[:512]),
            read_only=read_only,
            params=loggable_params(c.operation, c.params),
            resources=tuple(c.resources),
            error_code=error.code if error else "",
            error_message=printable(error.message[:AUDITED_MESSAGE]) if error else "",
            additional=c.additional,
            event_type=event_type,
            principal_type=c.caller.principal_type if c.caller.account else "",
            user_id=c.caller.user_id,
            response={} if error or read_only else loggable_response(c.operation, c.result),
        )
        if error:
            appends = [Append(AUDIT_STREAM, (fact,))]
        else:
            # Streams the decision read but does not write still pin their versions, so a
            # Decrypt decided just before a concurrent DisableKey is decided again after it.
            written = {a.stream for a in c.appends}
            guards = [Append(s, (), v) for s, v in c.seen.items() if s not in written]
            appends = [*c.appends, *guards, Append(AUDIT_STREAM, (fact,))]
        await self.log.append(appends, c.at_ms, () if error else c.vault)


def _resolved(out: list[str] | None, c: Call) -> None:
    if out is not None:
        out[:] = c.resources


def _reason(exc: BaseException) -> str:
    """Why an audit write failed, for the log: the log's own (safe) message, or the type."""
    if isinstance(exc, KMSError):
        return f"{exc.code}: {exc.message}"
    return type(exc).__name__


def printable(text: str) -> str:
    """Header-derived text as valid UTF-8 (headers may carry undecodable bytes)."""
    if text.isascii():  # O(1) in CPython, and ASCII always encodes: the common case
        return text
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")
