"""Credentials and the principals they act for: the config's ``[[principals]]`` and the
auto-created account root.

Rules: the config's principals are validated before anything is bound (``parse_principals``
raises ValueError naming the entry; identity policies are parsed as the evaluator will read
them); secrets live only in the config and in ``credentials.json`` in the data dir (mode
0600, printed once when first created) and never reach a log line or an audit record (the
access key id does, as AWS records it). Unique ids are derived from the ARN, so a principal
keeps its ``aws:userid`` across restarts and nodes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import string
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kms.domain import policy as pol
from kms.domain.errors import MalformedPolicyDocumentException
from kms.files import create_secret_file

CREDENTIALS_FILE = "credentials.json"
_AK_ALPHABET = string.ascii_uppercase + "234567"
_NAME = r"[\w+=,.@-]{1,64}"
_IAM_ARN = re.compile(
    rf"arn:aws:iam::([0-9]{{12}}):(?:(root)|(user|role)/((?:[\x21-\x7e]+/)*)({_NAME}))",
    re.ASCII)
_SESSION = re.compile(r"[\w+=,.@-]{2,64}", re.ASCII)
_ACCESS_KEY = re.compile(r"[A-Za-z0-9]{16,128}", re.ASCII)
_ROOT_ARN = re.compile(r"arn:aws:iam::([0-9]{12}):root", re.ASCII)
_ENTRY_KEYS = frozenset({"arn", "access_key_id", "secret_access_key", "tags", "policies",
                         "session_name"})


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a credential acts as: ``arn`` is the caller ARN (the assumed-role form for a
    role), ``identity_arn`` the IAM entity (the role's own ARN, else ``arn``)."""

    arn: str
    account: str
    principal_type: str = "Root"  # Root | IAMUser | AssumedRole
    user_id: str = ""
    tags: tuple[tuple[str, str], ...] = ()
    policies: tuple[str, ...] = ()
    identity_arn: str = ""


@dataclass(frozen=True, slots=True)
class Credential:
    access_key_id: str
    secret_access_key: str
    principal: Principal


def unique_id(prefix: str, arn: str) -> str:
    """An AWS-shaped unique id (``AIDA`` + 17 characters), stable per ARN."""
    digest = base64.b32encode(hashlib.sha256(arn.encode()).digest()).decode()
    return prefix + digest[:17]


def root_principal(account: str) -> Principal:
    arn = f"arn:aws:iam::{account}:root"
    return Principal(arn, account, "Root", account, identity_arn=arn)


def parse_principal(entry: Any, where: str) -> Credential:
    """One ``[[principals]]`` table as a credential, or ValueError saying what is wrong."""
    if not isinstance(entry, dict):
        raise ValueError(f"{where} must be a table")
    unknown = set(entry) - _ENTRY_KEYS
    if unknown:
        raise ValueError(f"{where}: unknown settings: {', '.join(sorted(unknown))}")
    for name in ("arn", "access_key_id", "secret_access_key"):
        if not isinstance(entry.get(name), str) or not entry[name]:
            raise ValueError(f"{where}: {name} is required (a string)")
    arn, key_id = entry["arn"], entry["access_key_id"]
    m = _IAM_ARN.fullmatch(arn)
    if m is None:
        raise ValueError(f"{where}: arn {arn!r} is not an IAM principal ARN "
                         "(arn:aws:iam::<12 digits>:user/<name>, :role/<name> or :root)")
    if _ACCESS_KEY.fullmatch(key_id) is None:
        raise ValueError(f"{where}: access_key_id must be 16-128 letters and digits")
    account, is_root, kind, _path, name = m.groups()
    tags = entry.get("tags", {})
    if not isinstance(tags, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in tags.items()):
        raise ValueError(f"{where}: tags must be a table of strings (tags = {{ team = \"x\" }})")
    policies = entry.get("policies", [])
    if not isinstance(policies, list) or not all(isinstance(p, str) for p in policies):
        raise ValueError(f"{where}: policies must be a list of JSON policy documents (strings)")
    for i, doc in enumerate(policies):
        try:
            parsed = json.loads(doc)
        except ValueError as exc:
            raise ValueError(f"{where}: policies[{i}] is not valid JSON: {exc}") from None
        if not isinstance(parsed, dict) or "Statement" not in parsed:
            raise ValueError(f"{where}: policies[{i}] is not a policy document "
                             "(a JSON object with a Statement)")
        try:  # as the evaluator reads it: what it cannot read would deny everything
            pol.parse(doc, resource_policy=False)
        except MalformedPolicyDocumentException as exc:
            raise ValueError(f"{where}: policies[{i}] is not a valid identity policy: "
                             f"{exc}") from None
    session = entry.get("session_name")
    if session is not None and (kind != "role" or not isinstance(session, str)
                                or _SESSION.fullmatch(session) is None):
        raise ValueError(f"{where}: session_name is for a role only, 2-64 of [A-Za-z0-9+=,.@_-]")
    extra = (tuple(sorted(tags.items())), tuple(policies))
    if is_root:
        principal = Principal(arn, account, "Root", account, *extra, identity_arn=arn)
    elif kind == "user":
        principal = Principal(arn, account, "IAMUser", unique_id("AIDA", arn), *extra,
                              identity_arn=arn)
    else:
        session = session or name
        caller = f"arn:aws:sts::{account}:assumed-role/{name}/{session}"
        principal = Principal(caller, account, "AssumedRole",
                              f"{unique_id('AROA', arn)}:{session}", *extra, identity_arn=arn)
    return Credential(key_id, entry["secret_access_key"], principal)


def parse_principals(entries: Iterable[Any]) -> list[Credential]:
    """Every ``[[principals]]`` table, refusing duplicate access keys and principals."""
    creds: list[Credential] = []
    keys: set[str] = set()
    arns: set[str] = set()
    for i, entry in enumerate(entries):
        cred = parse_principal(entry, f"principals[{i}]")
        if cred.access_key_id in keys:
            raise ValueError(f"principals[{i}]: access_key_id {cred.access_key_id} is "
                             "given twice")
        if cred.principal.arn in arns:
            raise ValueError(f"principals[{i}]: {cred.principal.arn} is given twice")
        keys.add(cred.access_key_id)
        arns.add(cred.principal.arn)
        creds.append(cred)
    return creds


class Credentials:
    """Access key id -> credential, and which principal ARNs exist (for policies)."""

    def __init__(self, creds: list[Credential]) -> None:
        self._by_id = {c.access_key_id: c for c in creds}
        self._arns = frozenset(a for c in creds
                               for a in (c.principal.arn, c.principal.identity_arn) if a)

    def secret(self, access_key_id: str) -> str | None:
        c = self._by_id.get(access_key_id)
        return c.secret_access_key if c else None

    def principal(self, access_key_id: str) -> Principal | None:
        c = self._by_id.get(access_key_id)
        return c.principal if c else None

    def exists(self, arn: str) -> bool:
        """Whether ``arn`` names a configured principal (user, role or its assumed-role
        session) or any account's root, as a key policy may name it."""
        return arn in self._arns or _ROOT_ARN.fullmatch(arn) is not None

    @classmethod
    def load_or_create(cls, data_dir: Path, account: str,
                       principals: Iterable[Mapping[str, Any]] = ()
                       ) -> tuple[Credentials, Credential | None]:
        """The config's principals plus, unless the config names this account's root, the
        stored root credential (created on first start). Returns the new credential (to
        print once) or None."""
        configured = parse_principals(principals)
        root_arn = f"arn:aws:iam::{account}:root"
        if any(c.principal.arn == root_arn for c in configured):
            return cls(configured), None
        path = data_dir / CREDENTIALS_FILE
        if path.exists():
            doc = json.loads(path.read_text())
            stored = [_from_doc(d) for d in doc["credentials"]]
            return cls(_merge(configured, stored)), None
        root = Credential(
            "AKIA" + "".join(secrets.choice(_AK_ALPHABET) for _ in range(16)),
            secrets.token_urlsafe(30)[:40],
            root_principal(account),
        )
        doc = {"credentials": [{"access_key_id": root.access_key_id,
                                "secret_access_key": root.secret_access_key,
                                "principal_arn": root.principal.arn, "account": account}]}
        create_secret_file(path, json.dumps(doc, indent=2).encode())
        return cls(_merge(configured, [root])), root


def _merge(configured: list[Credential], stored: list[Credential]) -> list[Credential]:
    """The config wins an access key id both give."""
    ids = {c.access_key_id for c in configured}
    return configured + [c for c in stored if c.access_key_id not in ids]


def _from_doc(d: dict[str, str]) -> Credential:
    account = d["account"]
    if d["principal_arn"] == f"arn:aws:iam::{account}:root":
        return Credential(d["access_key_id"], d["secret_access_key"], root_principal(account))
    return Credential(d["access_key_id"], d["secret_access_key"],
                      Principal(d["principal_arn"], account, identity_arn=d["principal_arn"]))
