"""Requests built from botocore's KMS model for the fuzz test: the dev node's real keys,
aliases and blobs (real and damaged ciphertexts, signatures, MACs), and hypothesis strategies
for every operation's input shape.

Rules: ``clean`` strategies keep every value well-typed and inside the model's limits (so
most reach a handler); the others also go past the limits, use wrong enums and JSON types,
drop required members and add unknown ones. Helper calls here are not fuzz requests.
"""

from __future__ import annotations

import base64
import re
from typing import Any

from hypothesis import strategies as st

from tests.support.fuzz_wire import ACCOUNT, MODEL, REGION, SHAPES, Wire
from tests.support.server import ServerProcess

AWS_MANAGED_SERVICES = ("s3", "ebs", "sns", "sqs", "lambda", "rds", "secretsmanager")
KEY_ID_MEMBERS = frozenset({"KeyId", "TargetKeyId", "DestinationKeyId", "SourceKeyId"})


# -- the nodes and their real keys -------------------------------------------------------------
class DevTarget:
    """The dev node, its real keys, and the pools the strategies draw key ids from."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.wire = Wire(server.port)
        self.keys: dict[str, str] = {}
        self.aliases = ["alias/fuzz-symmetric", "alias/fuzz-sign"]
        self.blobs: dict[str, list[bytes]] = {}

    def must(self, operation: str, doc: dict[str, Any]) -> dict[str, Any]:
        status, out = self.wire.call(operation, doc)
        assert status == 200, (operation, doc, out)
        return out

    def create_fixtures(self) -> None:
        specs = {
            "symmetric": {},
            "rsa_sign": {"KeySpec": "RSA_2048", "KeyUsage": "SIGN_VERIFY"},
            "hmac": {"KeySpec": "HMAC_256", "KeyUsage": "GENERATE_VERIFY_MAC"},
            "ecc_agree": {"KeySpec": "ECC_NIST_P256", "KeyUsage": "KEY_AGREEMENT"},
            "external": {"Origin": "EXTERNAL"},
        }
        for name, doc in specs.items():
            status, out = self.wire.call("CreateKey", {"Description": f"fuzz {name}", **doc})
            if status == 200:  # a spec the node does not support is simply not in the pool
                self.keys[name] = out["KeyMetadata"]["KeyId"]
        assert {"symmetric", "rsa_sign", "hmac"} <= set(self.keys)
        self.must("CreateAlias", {"AliasName": self.aliases[0],
                                  "TargetKeyId": self.keys["symmetric"]})
        self.must("CreateAlias", {"AliasName": self.aliases[1],
                                  "TargetKeyId": self.keys["rsa_sign"]})
        sym = self.keys["symmetric"]
        ct = self.must("Encrypt", {"KeyId": sym, "Plaintext": base64.b64encode(b"fuzz").decode(),
                                   "EncryptionContext": {"purpose": "fuzz"}})["CiphertextBlob"]
        ct2 = self.must("Encrypt", {"KeyId": sym, "Plaintext": "AA=="})["CiphertextBlob"]
        msg = base64.b64encode(b"message").decode()
        sig = self.must("Sign", {"KeyId": self.keys["rsa_sign"], "Message": msg,
                                 "SigningAlgorithm": "RSASSA_PSS_SHA_256"})["Signature"]
        mac = self.must("GenerateMac", {"KeyId": self.keys["hmac"], "Message": msg,
                                        "MacAlgorithm": "HMAC_SHA_256"})["Mac"]
        pub = self.must("GetPublicKey", {"KeyId": self.keys["rsa_sign"]})["PublicKey"]
        self.blobs = {
            "CiphertextBlob": [base64.b64decode(ct), base64.b64decode(ct2)],
            "Signature": [base64.b64decode(sig)],
            "Mac": [base64.b64decode(mac)],
            "PublicKey": [base64.b64decode(pub)],
            "Message": [b"message"],
        }

    def key_refs(self) -> list[str]:
        refs: list[str] = []
        for key_id in self.keys.values():
            refs += [key_id, f"arn:aws:kms:{REGION}:{ACCOUNT}:key/{key_id}"]
        for alias in self.aliases:
            refs += [alias, f"arn:aws:kms:{REGION}:{ACCOUNT}:{alias}"]
        # AWS managed keys come to exist on first use; a refused first use must not make one
        refs += [f"alias/aws/{service}" for service in AWS_MANAGED_SERVICES]
        refs.append(f"arn:aws:kms:{REGION}:{ACCOUNT}:alias/aws/dynamodb")
        return refs

    def restore(self) -> None:
        """Undo what accepted fuzz calls did to the fixture keys, so later operations still
        reach their handlers with usable keys (not counted; results do not matter)."""
        for key_id in self.keys.values():
            self.wire.call("CancelKeyDeletion", {"KeyId": key_id})
            self.wire.call("EnableKey", {"KeyId": key_id})
        for alias, key in zip(self.aliases, ("symmetric", "rsa_sign"), strict=True):
            status, _ = self.wire.call("UpdateAlias", {"AliasName": alias,
                                                      "TargetKeyId": self.keys[key]})
            if status != 200:
                self.wire.call("CreateAlias", {"AliasName": alias,
                                               "TargetKeyId": self.keys[key]})


# -- strategies from the model -----------------------------------------------------------------
JSON_SCALARS = (st.none() | st.booleans() | st.integers(-(2**70), 2**70)
                | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20))
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12)
UUIDS = st.uuids().map(str)
RANDOM_KEY_REFS = st.one_of(
    UUIDS,
    UUIDS.map(lambda u: f"arn:aws:kms:{REGION}:{ACCOUNT}:key/{u}"),
    UUIDS.map(lambda u: f"arn:aws:kms:eu-west-1:{ACCOUNT}:key/{u}"),
    UUIDS.map(lambda u: f"arn:aws:kms:{REGION}:444455556666:key/{u}"),
    st.from_regex(r"alias/[a-zA-Z0-9/_-]{1,40}", fullmatch=True),
    st.from_regex(r"arn:aws:kms:[a-z0-9-]{0,12}:[0-9]{0,12}:(key|alias)/[a-zA-Z0-9/_-]{0,30}",
                  fullmatch=True),
    st.sampled_from(["", "alias/", "alias/aws/", "arn:aws:kms:::", "key/", "mrk-" + "0" * 32,
                     "arn:aws:kms:us-east-1:111122223333:key/", "*", "alias/../x"]),
    st.text(max_size=40),
)


def weighted(*options: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """Choose among strategies by weight (``one_of`` flattens nested ones and weighs every
    leaf alike, which would drown the real key ids among the random ones)."""
    table = [strategy for weight, strategy in options for _ in range(weight)]
    return st.sampled_from(table).flatmap(lambda strategy: strategy)


UNKNOWN_MEMBER = st.sampled_from([True] + [False] * 19)


def sized_text(low: int, high: int, clean: bool) -> st.SearchStrategy[str]:
    """Strings at the limits: exactly min, exactly max, one past each (not when clean), and
    in between."""
    sizes = [max(low, 1), high] if clean else [low, high, high + 1] + ([low - 1] if low else [])
    big = st.sampled_from(sizes).flatmap(
        lambda n: st.text(alphabet="abcXYZ019_-/:", min_size=1, max_size=8).map(
            lambda s: (s * (n // len(s) + 1))[:n]))
    small = (st.text(alphabet=st.characters(codec="utf-8"), min_size=max(low, 1),
                     max_size=max(low, min(high, 40))) if clean
             else st.text(max_size=min(high + 1, 40)))
    return weighted((2, small), (1, big)) if high < 10**6 else small


def repeated(n: int) -> st.SearchStrategy[bytes]:
    return st.binary(min_size=1, max_size=8).map(lambda b: (b * (n // len(b) + 1))[:n])


def damage(blob_and_where: tuple[bytes, int, int]) -> bytes:
    blob, where, xor = blob_and_where
    i = where % len(blob)
    return blob[:i] + bytes([blob[i] ^ xor]) + blob[i + 1:]


class Builder:
    """Strategies for an operation's input shape. ``clean`` ones keep every value well-typed
    and inside the model's limits (so most reach a handler); the others also go past the
    limits, use wrong enums and wrong JSON types, drop required members, add unknown ones."""

    def __init__(self, target: DevTarget, clean: bool) -> None:
        self.target = target
        self.clean = clean
        self.key_refs = target.key_refs()
        self.memo: dict[tuple[str, str], st.SearchStrategy[Any]] = {}

    def member(self, shape_name: str, member_name: str, depth: int = 0) -> st.SearchStrategy[Any]:
        key = (shape_name, member_name)
        if key not in self.memo:
            good = self.typed(shape_name, member_name, depth)
            self.memo[key] = good if self.clean else weighted((11, good), (1, JSON_VALUES))
        return self.memo[key]

    def typed(self, shape_name: str, member_name: str, depth: int) -> st.SearchStrategy[Any]:
        shape = SHAPES[shape_name]
        kind = shape["type"]
        clean = self.clean
        low, high = shape.get("min", 0), shape.get("max", 10**7)
        if kind == "string":
            if member_name in KEY_ID_MEMBERS:
                return weighted((3, st.sampled_from(self.key_refs)), (1, RANDOM_KEY_REFS))
            if member_name == "AliasName":
                return weighted(
                    (2, st.sampled_from(self.target.aliases)),
                    (2, st.from_regex(r"alias/[a-zA-Z0-9/_-]{1,30}", fullmatch=True)),
                    (1, sized_text(low, high, clean)))
            if "enum" in shape:
                enum = st.sampled_from(shape["enum"])
                if clean:
                    return enum
                return weighted((3, enum), (1, enum.map(str.lower)), (1, st.text(max_size=20)))
            if "pattern" in shape and (clean or high <= 2048):
                try:
                    by_pattern = st.from_regex(re.compile(shape["pattern"], re.ASCII),
                                               fullmatch=True).filter(
                        lambda s: low <= len(s) <= high + (0 if clean else 1))
                except Exception:  # a pattern hypothesis cannot generate from
                    by_pattern = st.nothing()
                return by_pattern if clean else weighted((1, by_pattern),
                                                         (1, sized_text(low, high, clean)))
            return sized_text(low, high, clean)
        if kind == "blob":
            sizes = ([max(low, 1), high] if clean
                     else [max(low, 1), high, high + 1, 0] + ([low - 1] if low > 1 else []))
            raw = weighted((1, st.binary(min_size=max(low, 1), max_size=min(high, 64))),
                           (1, st.sampled_from(sizes).flatmap(repeated)))
            real = self.target.blobs.get(member_name)
            if real:
                known = st.sampled_from(real)
                damaged = st.tuples(known, st.integers(0, 10**6), st.integers(1, 255)).map(damage)
                raw = weighted((3, known), (1, damaged), (1, known.map(lambda b: b[:-1])),
                               (1, raw))
            encoded = raw.map(lambda b: base64.b64encode(b).decode())
            if clean:
                return encoded
            broken = st.sampled_from(["not base64!", "AAA", "====", "A===", "\u00e9\u00e9==",
                                      "QUJD\nREVG", "QUJD REVG"])
            return weighted((6, encoded), (1, broken))
        if kind in ("integer", "long"):
            inside = st.integers(low, min(high, 10**9))
            if clean:
                return weighted((1, inside), (1, st.sampled_from([low, high])))
            edge = [low, high, low - 1, high + 1, 0, -1, 2**31, -(2**31) - 1, 2**63, 10**30]
            return weighted((2, st.sampled_from(edge)), (1, inside))
        if kind == "boolean":
            return st.booleans()
        if kind == "timestamp":
            if clean:
                return st.floats(0, 4e9)
            return st.one_of(st.floats(-1e12, 1e12), st.sampled_from(
                ["2024-01-01T00:00:00Z", "2024-13-01", "not a time", "", "1e400"]))
        if kind == "list":
            item = self.member(shape["member"]["shape"], member_name, depth + 1)
            most = shape.get("max", 3)
            lists = st.lists(item, min_size=shape.get("min", 0), max_size=min(most, 3))
            if not clean and most <= 50:
                lists = weighted((4, lists), (1, item.map(lambda v: [v] * (most + 1))))
            return lists
        if kind == "map":
            keys = self.typed(shape["key"]["shape"], "", depth + 1)
            values = self.typed(shape["value"]["shape"], "", depth + 1)
            return weighted((2, st.dictionaries(keys, values, max_size=4)),
                            (1, st.just({"purpose": "fuzz"})))
        if kind == "structure":
            return self.structure(shape_name, depth)
        return JSON_VALUES

    def structure(self, shape_name: str, depth: int) -> st.SearchStrategy[dict[str, Any]]:
        shape = SHAPES[shape_name]
        required = set(shape.get("required", ()))
        members = [(name, self.member(m["shape"], name, depth + 1))
                   for name, m in shape.get("members", {}).items()] if depth < 6 else []
        # (sampled_from, not integers: hypothesis favours integer bounds, which would drop
        # required members far more often than the 10% meant here)
        keep_required = st.just(True) if self.clean else st.sampled_from([True] * 9 + [False])
        keep_optional = st.sampled_from([True] * 3 + [False] * 7)

        @st.composite
        def build(draw: st.DrawFn) -> dict[str, Any]:
            out: dict[str, Any] = {}
            for name, strategy in members:
                if draw(keep_required if name in required else keep_optional):
                    out[name] = draw(strategy)
            if not self.clean and draw(UNKNOWN_MEMBER):
                out[draw(st.text(max_size=12))] = draw(JSON_VALUES)  # an unknown member
            return out

        return build()


def operation_requests(target: DevTarget, name: str) -> st.SearchStrategy[dict[str, Any]]:
    shape = MODEL["operations"][name].get("input", {}).get("shape")
    if not shape:
        return st.builds(dict)
    return weighted((1, Builder(target, clean=True).structure(shape, 0)),
                    (1, Builder(target, clean=False).structure(shape, 0)))
