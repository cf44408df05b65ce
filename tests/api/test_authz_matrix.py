"""The authorization matrix: principals x operations x keys, every cell driven through boto3
signed with that principal's own credentials, against a node started from a config.

Keys: one under the default key policy, one whose policy names principals directly (no
account delegation for cryptographic use, an explicit Deny on a tag condition, another
account), one under an ABAC policy (aws:ResourceTag against ${aws:PrincipalTag}), and an
AWS managed key; grants (with an encryption-context constraint, and one used by its token)
add rows. What each cell should answer comes from the table ``ALLOWED`` written out by
hand below, not from the evaluator. Run on a secured node (SigV4 checked) and on a --dev
node (where X-Kms-Via-Service lets a caller act through S3 with the AWS managed key).
"""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from tests.conftest import client_for
from tests.support.server import ServerProcess

A = "111122223333"
B = "444455556666"
EC = {"app": "pay"}


def iam(account: str, name: str) -> str:
    return f"arn:aws:iam::{account}:{name}"


def identity(*statements: dict[str, Any]) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": list(statements)})


ALL_KMS = identity({"Effect": "Allow", "Action": "kms:*", "Resource": "*"})
CAROL = identity(
    {"Effect": "Allow", "Resource": f"arn:aws:kms:*:{A}:key/*",
     "Action": ["kms:Encrypt", "kms:Decrypt", "kms:DescribeKey", "kms:GenerateDataKey"]},
    {"Effect": "Deny", "Action": "kms:Decrypt", "Resource": "*",
     "Condition": {"StringEquals": {"kms:EncryptionContext:app": "pay"}}})
APP = identity({"Effect": "Allow", "Resource": "*",
                "Action": ["kms:Encrypt", "kms:Decrypt", "kms:GenerateDataKey"]})
OLGA = identity({"Effect": "Allow", "Resource": "*",
                 "Action": ["kms:Encrypt", "kms:Decrypt", "kms:DescribeKey"]})

# name -> (config ARN, access key, caller ARN, tags, identity policies, session name)
PRINCIPALS: dict[str, tuple[str, str, str, dict[str, str], list[str], str]] = {
    "root": (iam(A, "root"), "AKIAMATRIXROOT000001", iam(A, "root"), {}, [], ""),
    "alice": (iam(A, "user/alice"), "AKIAMATRIXALICE00001", iam(A, "user/alice"),
              {"team": "payments"}, [ALL_KMS], ""),
    "bob": (iam(A, "user/bob"), "AKIAMATRIXBOB0000001", iam(A, "user/bob"), {}, [], ""),
    "carol": (iam(A, "user/carol"), "AKIAMATRIXCAROL00001", iam(A, "user/carol"), {},
              [CAROL], ""),
    "app": (iam(A, "role/app"), "AKIAMATRIXAPP0000001",
            f"arn:aws:sts::{A}:assumed-role/app/run-1", {}, [APP], "run-1"),
    "pat": (iam(A, "user/pat"), "AKIAMATRIXPAT0000001", iam(A, "user/pat"),
            {"team": "payments"}, [], ""),
    "olga": (iam(B, "user/olga"), "AKIAMATRIXOLGA000001", iam(B, "user/olga"),
             {"team": "payments"}, [OLGA], ""),
}


def secret_of(name: str) -> str:
    return f"{name}-matrix-secret"


def config_text() -> str:
    parts = [f'account_id = "{A}"', f'audit_readers = ["{iam(A, "root")}"]']
    for name, (arn, key, _caller, tags, policies, session) in PRINCIPALS.items():
        parts.append("[[principals]]")
        parts.append(f'arn = "{arn}"')
        parts.append(f'access_key_id = "{key}"')
        parts.append(f'secret_access_key = "{secret_of(name)}"')
        if session:
            parts.append(f'session_name = "{session}"')
        if tags:
            parts.append("tags = { " + ", ".join(f'{k} = "{v}"' for k, v in tags.items())
                         + " }")
        if policies:
            parts.append("policies = [" + ", ".join(repr(p) for p in policies) + "]")
    return "\n".join(parts) + "\n"


def key_policy(*statements: dict[str, Any]) -> str:
    return json.dumps({"Version": "2012-10-17", "Id": "matrix", "Statement": list(statements)})


DIRECT_POLICY = key_policy(
    {"Sid": "Admins", "Effect": "Allow", "Principal": {"AWS": iam(A, "root")},
     "Action": ["kms:PutKeyPolicy", "kms:GetKeyPolicy", "kms:DescribeKey", "kms:TagResource",
                "kms:CreateGrant"], "Resource": "*"},
    {"Sid": "Bob with the payments context", "Effect": "Allow",
     "Principal": {"AWS": iam(A, "user/bob")}, "Action": ["kms:Encrypt", "kms:Decrypt"],
     "Resource": "*", "Condition": {"StringEquals": {"kms:EncryptionContext:app": "pay"}}},
    {"Sid": "The other account", "Effect": "Allow", "Principal": {"AWS": iam(B, "root")},
     "Action": ["kms:Encrypt", "kms:Decrypt", "kms:DescribeKey"], "Resource": "*"},
    {"Sid": "Only the payments team decrypts", "Effect": "Deny", "Principal": "*",
     "Action": "kms:Decrypt", "Resource": "*",
     "Condition": {"StringNotEquals": {"aws:PrincipalTag/team": "payments"}}},
)
ABAC_POLICY = key_policy(
    {"Sid": "Enable IAM policies", "Effect": "Allow", "Principal": {"AWS": iam(A, "root")},
     "Action": "kms:*", "Resource": "*"},
    {"Sid": "Same team as the key", "Effect": "Allow", "Principal": {"AWS": "*"},
     "Action": ["kms:Encrypt", "kms:Decrypt", "kms:DescribeKey"], "Resource": "*",
     "Condition": {"StringEquals": {"aws:ResourceTag/team": "${aws:PrincipalTag/team}",
                                    "kms:CallerAccount": A}}},
)

# -- the expected table (by hand) -----------------------------------------------------------
KEY_OPS = ("Encrypt", "EncryptNoContext", "Decrypt", "GenerateDataKey", "DescribeKey",
           "GetKeyPolicy", "PutKeyPolicy", "TagResource")
MANAGED_OPS = ("Encrypt", "GenerateDataKey", "DescribeKey", "GetKeyPolicy", "PutKeyPolicy",
               "TagResource")
VIA_OPS = ("EncryptViaS3", "GenerateDataKeyViaS3", "DecryptViaS3")
KEYLESS_OPS = ("CreateKey", "ListKeys")
EVERYTHING = frozenset(KEY_OPS)
ADMIN = frozenset({"DescribeKey", "GetKeyPolicy", "PutKeyPolicy", "TagResource"})
USE = frozenset({"Encrypt", "EncryptNoContext", "Decrypt", "GenerateDataKey"})
IN_ACCOUNT = ("root", "alice", "bob", "carol", "app", "pat")

ALLOWED: dict[str, dict[str, frozenset[str]]] = {
    "default": {
        "root": EVERYTHING, "alice": EVERYTHING,
        "carol": frozenset({"Encrypt", "EncryptNoContext", "GenerateDataKey", "DescribeKey"}),
        "app": USE,
        "bob": frozenset({"Encrypt", "Decrypt"}),  # his grant, constrained to app=pay
        "pat": frozenset({"Decrypt"}),  # her grant, used by its token
    },
    "direct": {
        "root": ADMIN, "alice": ADMIN,  # account delegation for the admin actions only
        "carol": frozenset({"DescribeKey"}),
        "bob": frozenset({"Encrypt"}),  # Decrypt: the explicit Deny (no team tag)
        "olga": frozenset({"Encrypt", "EncryptNoContext", "Decrypt", "DescribeKey"}),
        "app": frozenset({"GenerateDataKey"}),  # a grant only
    },
    "abac": {
        "root": EVERYTHING, "alice": EVERYTHING,
        "pat": frozenset({"Encrypt", "EncryptNoContext", "Decrypt", "DescribeKey"}),
        "carol": frozenset({"Encrypt", "EncryptNoContext", "GenerateDataKey", "DescribeKey"}),
        "app": USE,
    },
    "managed": {
        "root": frozenset({"DescribeKey", "GetKeyPolicy"}),
        "alice": frozenset({"DescribeKey", "GetKeyPolicy"}),
        "carol": frozenset({"DescribeKey"}),
        # Through S3 (--dev only): every principal of the account, as AWS's policy says;
        # carol's own Deny still holds for Decrypt with app=pay.
        **{p: frozenset() for p in ("bob", "app", "pat")},
    },
    "keyless": {"root": frozenset(KEYLESS_OPS), "alice": frozenset(KEYLESS_OPS)},
}
VIA_ALLOWED = {p: frozenset(VIA_OPS) - ({"DecryptViaS3"} if p == "carol" else set())
               for p in IN_ACCOUNT}


def expected(key: str, principal: str, op: str) -> bool:
    if op in VIA_OPS:
        return op in VIA_ALLOWED.get(principal, frozenset())
    return op in ALLOWED[key].get(principal, frozenset())


# -- driving it ----------------------------------------------------------------------------
def client(url: str, name: str, via: str = "") -> Any:
    c: Any = client_for(url, access_key=PRINCIPALS[name][1], secret=secret_of(name))
    if via:
        def add(request: Any, **_: Any) -> None:
            request.headers["X-Kms-Via-Service"] = via
        c.meta.events.register("before-sign.kms.*", add)
    return c


class World:
    """The keys, ciphertexts and grant tokens the cells use, made by the root."""

    def __init__(self, url: str, dev: bool) -> None:
        self.url, self.dev = url, dev
        root = client(url, "root")
        self.arn = {
            "default": root.create_key()["KeyMetadata"]["Arn"],
            "direct": root.create_key(Policy=DIRECT_POLICY)["KeyMetadata"]["Arn"],
            "abac": root.create_key(Policy=ABAC_POLICY, Tags=[
                {"TagKey": "team", "TagValue": "payments"}])["KeyMetadata"]["Arn"],
            "managed": root.describe_key(KeyId="alias/aws/s3")["KeyMetadata"]["Arn"],
        }
        self.policy = {k: root.get_key_policy(KeyId=a)["Policy"] for k, a in self.arn.items()}
        root.create_grant(KeyId=self.arn["default"], GranteePrincipal=iam(A, "user/bob"),
                          Operations=["Encrypt", "Decrypt"],
                          Constraints={"EncryptionContextSubset": EC})
        root.create_grant(KeyId=self.arn["direct"], GranteePrincipal=iam(A, "role/app"),
                          Operations=["GenerateDataKey"])
        self.pat_token = root.create_grant(
            KeyId=self.arn["default"], GranteePrincipal=iam(A, "user/pat"),
            Operations=["Decrypt"])["GrantToken"]
        blob = {k: root.encrypt(KeyId=a, Plaintext=b"m", EncryptionContext=EC)
                for k, a in self.arn.items() if k in ("default", "abac")}
        self.blob = {k: v["CiphertextBlob"] for k, v in blob.items()}
        self.blob["direct"] = client(url, "bob").encrypt(
            KeyId=self.arn["direct"], Plaintext=b"m", EncryptionContext=EC)["CiphertextBlob"]
        if dev:
            self.blob["managed"] = client(url, "root", "s3.us-east-1.amazonaws.com").encrypt(
                KeyId=self.arn["managed"], Plaintext=b"m", EncryptionContext=EC,
            )["CiphertextBlob"]

    def call(self, principal: str, key: str, op: str) -> Callable[[], Any]:
        via = "s3.us-east-1.amazonaws.com" if op in VIA_OPS else ""
        c = client(self.url, principal, via)
        arn = self.arn.get(key, "")
        tokens = {"GrantTokens": [self.pat_token]} if (principal, key) == ("pat", "default") \
            else {}
        calls: dict[str, Callable[[], Any]] = {
            "Encrypt": lambda: c.encrypt(KeyId=arn, Plaintext=b"x", EncryptionContext=EC),
            "EncryptNoContext": lambda: c.encrypt(KeyId=arn, Plaintext=b"x"),
            "Decrypt": lambda: c.decrypt(KeyId=arn, CiphertextBlob=self.blob[key],
                                         EncryptionContext=EC, **tokens),
            "GenerateDataKey": lambda: c.generate_data_key(KeyId=arn, KeySpec="AES_256",
                                                           EncryptionContext=EC),
            "DescribeKey": lambda: c.describe_key(KeyId=arn),
            "GetKeyPolicy": lambda: c.get_key_policy(KeyId=arn),
            "PutKeyPolicy": lambda: c.put_key_policy(KeyId=arn, Policy=self.policy[key]),
            "TagResource": lambda: c.tag_resource(KeyId=arn, Tags=[
                {"TagKey": "owner", "TagValue": principal}]),
            "CreateKey": lambda: c.create_key(Description=f"by {principal}"),
            "ListKeys": lambda: c.list_keys(),
            "EncryptViaS3": lambda: c.encrypt(KeyId=arn, Plaintext=b"x", EncryptionContext=EC),
            "GenerateDataKeyViaS3": lambda: c.generate_data_key(KeyId=arn, KeySpec="AES_256"),
            "DecryptViaS3": lambda: c.decrypt(CiphertextBlob=self.blob[key],
                                              EncryptionContext=EC),
        }
        return calls[op]


def cells(dev: bool) -> Iterator[tuple[str, str, str]]:
    for key in ("default", "direct", "abac", "managed"):
        for principal in PRINCIPALS:
            for op in (MANAGED_OPS + (VIA_OPS if dev else ())) if key == "managed" \
                    else KEY_OPS:
                yield key, principal, op
    for principal in PRINCIPALS:
        for op in KEYLESS_OPS:
            yield "keyless", principal, op


def audit_records(url: str) -> dict[str, dict[str, Any]]:
    """Every CloudTrail record of the node by requestID (signed by the root, an audit
    reader, which a --dev node does not ask for)."""
    found: dict[str, dict[str, Any]] = {}
    after = ""
    creds = Credentials(PRINCIPALS["root"][1], secret_of("root"))
    while True:
        query = urllib.parse.urlencode({"limit": 1000, **({"after": after} if after else {})})
        req = AWSRequest(method="GET", url=f"{url}/_kms/audit?{query}")
        SigV4Auth(creds, "kms", "us-east-1").add_auth(req)
        with urllib.request.urlopen(urllib.request.Request(
                req.url, headers=dict(req.headers.items())), timeout=30) as r:
            page = json.load(r)
        for record in page["Records"]:  # a cross-account call has one per account: A's kept
            if record["recipientAccountId"] == A or record["requestID"] not in found:
                found[record["requestID"]] = record
        if not page["Records"]:
            return found
        after = page["NextCursor"]


def audited(record: dict[str, Any] | None, caller: str, message: str) -> bool:
    """The denial's record names the principal (a caller of another account as CloudTrail
    shows it to the key's owner: its account, the ARN in the message) and the reason."""
    if record is None or record.get("errorCode") != "AccessDenied":  # CloudTrail's code
        return False
    who = record["userIdentity"]
    if caller.split(":")[4] == A:
        named = who.get("arn") == caller
    elif record["recipientAccountId"] == A:  # as the key owner sees another account's caller
        named = who.get("type") == "AWSAccount" and who.get("accountId") == caller.split(":")[4]
    else:  # a call naming no key of A: only the caller's own account has a record
        named = who.get("arn") == caller
    reason = record.get("additionalEventData", {}).get("authorizationDenied", {}).get("reason")
    return named and record.get("errorMessage") == message and bool(reason) \
        and message.endswith(reason)


@pytest.fixture(params=["secured", "dev"])
def node(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ServerProcess]:
    config = tmp_path / "kms.toml"
    config.write_text(config_text())
    server = ServerProcess(tmp_path / "data", dev=request.param == "dev",
                           extra=["--config", str(config)]).start()
    try:
        yield server
    finally:
        server.stop()


def test_the_authorization_matrix(node: ServerProcess) -> None:
    world = World(node.url, node.dev)
    unexpected_allows: list[tuple[str, str, str]] = []
    unexpected_denials: list[tuple[str, str, str, str]] = []
    denials: list[tuple[str, str, str]] = []  # (request id, principal, action message part)
    total = 0
    for key, principal, op in cells(node.dev):
        total += 1
        want = expected(key, principal, op)
        try:
            world.call(principal, key, op)()
            if not want:
                unexpected_allows.append((key, principal, op))
        except ClientError as exc:
            error = exc.response["Error"]
            if error["Code"] != "AccessDeniedException":
                raise AssertionError(f"{key} {principal} {op}: {error}") from exc
            assert exc.response["ResponseMetadata"]["HTTPStatusCode"] == 400
            caller = PRINCIPALS[principal][2]
            assert error["Message"].startswith(f"User: {caller} is not authorized to perform: "
                                               "kms:"), error["Message"]
            denials.append((exc.response["ResponseMetadata"]["RequestId"], caller,
                            error["Message"]))
            if want:
                unexpected_denials.append((key, principal, op, error["Message"]))
    records = audit_records(node.url)
    unaudited = [d for d in denials if not audited(records.get(d[0]), *d[1:])]
    print(f"\nauthorization matrix ({'--dev' if node.dev else 'secured'}): {total} cells, "
          f"{len(denials)} denied")
    # RELIABILITY.md's line exactly, then the other figure
    print(f"unexpected allows {len(unexpected_allows)}; "
          f"denials without audit record {len(unaudited)}")
    print(f"unexpected denials {len(unexpected_denials)}")
    assert unexpected_allows == []
    assert unexpected_denials == []
    assert unaudited == []
