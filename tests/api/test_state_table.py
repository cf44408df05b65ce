"""The key-state x operation table (reference Appendix B, encoded once as
``kms.domain.key.STATE_RULES``) enforced column by column through a real node and
boto3: every operation the node implements is driven against a key in the Disabled,
PendingDeletion and PendingImport states and must answer what the table says."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from kms.domain.key import STATE_RULES, KeyState
from kms.service import OPERATIONS
from tests.api.test_import import wrap

STATES = (KeyState.DISABLED, KeyState.PENDING_DELETION, KeyState.PENDING_IMPORT)
WRAPPING = "RSAES_OAEP_SHA_256"
GRANTEE = "arn:aws:iam::111122223333:user/alice"
REFERENCE = Path(__file__).resolve().parents[3] / "shared" / "reference" / "kms_api.md"

# kind -> (KeySpec, KeyUsage)
KINDS = {
    "sym": ("SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT"),
    "ext": ("SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT"),  # always EXTERNAL, material imported
    "sign": ("ECC_NIST_P256", "SIGN_VERIFY"),
    "mac": ("HMAC_256", "GENERATE_VERIFY_MAC"),
    "agree": ("ECC_NIST_P256", "KEY_AGREEMENT"),
    "kem": ("ML_KEM_768", "ENCAPSULATE_DECAPSULATE"),
    "mrk": ("SYMMETRIC_DEFAULT", "ENCRYPT_DECRYPT"),  # a multi-region primary
}


def _pkcs8_p256() -> bytes:
    return ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())


def _peer_public_key() -> bytes:
    return ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


@dataclass
class Subject:
    """The key under test, and what was made with it before it reached its state."""

    key_id: str
    arn: str
    material: bytes = b""
    token: bytes = b""
    public_key: bytes = b""  # the wrapping key of ``token``
    blob: bytes = b""
    signature: bytes = b""
    mac: bytes = b""
    companion: str = ""  # an Enabled symmetric key beside it
    grant_id: str = ""  # a grant on the key, made while it was Enabled


@dataclass(frozen=True)
class Op:
    kind: str
    call: Callable[[Any, Subject], Any]
    needs: tuple[str, ...] = ()  # made before the state change: "blob" "signature" "mac" "alias"
    #                              "grant"


def _import(kms: Any, subject: Subject, material: bytes) -> None:
    got = kms.get_parameters_for_import(KeyId=subject.key_id, WrappingAlgorithm=WRAPPING,
                                        WrappingKeySpec="RSA_2048")
    kms.import_key_material(KeyId=subject.key_id, ImportToken=got["ImportToken"],
                            EncryptedKeyMaterial=wrap(WRAPPING, got["PublicKey"], material),
                            ExpirationModel="KEY_MATERIAL_DOES_NOT_EXPIRE")
    subject.material, subject.token, subject.public_key = (material, got["ImportToken"],
                                                           got["PublicKey"])


def _artifacts(kms: Any, subject: Subject, needs: tuple[str, ...]) -> None:
    """While the key can still do so, make what the operation will need later."""
    if "blob" in needs:
        subject.blob = kms.encrypt(KeyId=subject.key_id, Plaintext=b"p")["CiphertextBlob"]
    if "signature" in needs:
        subject.signature = kms.sign(KeyId=subject.key_id, Message=b"m",
                                     SigningAlgorithm="ECDSA_SHA_256")["Signature"]
    if "mac" in needs:
        subject.mac = kms.generate_mac(KeyId=subject.key_id, Message=b"m",
                                       MacAlgorithm="HMAC_SHA_256")["Mac"]
    if "grant" in needs:
        subject.grant_id = kms.create_grant(KeyId=subject.key_id, GranteePrincipal=GRANTEE,
                                            Operations=["Decrypt"])["GrantId"]


def make_subject(kms: Any, state: KeyState, op: Op) -> Subject:
    """A key of ``op.kind`` brought into ``state`` the way a customer would: an EXTERNAL
    key takes its material (and the import token stays valid for 24 h) before the move."""
    spec, usage = KINDS[op.kind]
    external = op.kind == "ext" or state is KeyState.PENDING_IMPORT
    md = kms.create_key(KeySpec=spec, KeyUsage=usage,
                        Origin="EXTERNAL" if external else "AWS_KMS",
                        MultiRegion=op.kind == "mrk",
                        Tags=[{"TagKey": "team", "TagValue": "a"}])["KeyMetadata"]
    subject = Subject(md["KeyId"], md["Arn"])
    subject.companion = kms.create_key()["KeyMetadata"]["KeyId"]
    kms.create_alias(AliasName="alias/companion", TargetKeyId=subject.companion)
    if "alias" in op.needs:
        kms.create_alias(AliasName="alias/subject", TargetKeyId=subject.key_id)
    uses_material = op.kind == "ext" or not {"blob", "signature", "mac", "grant"}.isdisjoint(
        op.needs)
    if external and (state is not KeyState.PENDING_IMPORT or uses_material):
        _import(kms, subject, _pkcs8_p256() if op.kind in ("sign", "agree")
                else os.urandom(32))
    _artifacts(kms, subject, op.needs)
    if state is KeyState.DISABLED:
        kms.disable_key(KeyId=subject.key_id)
    elif state is KeyState.PENDING_DELETION:
        kms.schedule_key_deletion(KeyId=subject.key_id, PendingWindowInDays=7)
    elif subject.material:
        kms.delete_imported_key_material(KeyId=subject.key_id)
    assert kms.describe_key(KeyId=subject.key_id)["KeyMetadata"]["KeyState"] == state.value
    return subject


def _reimport(kms: Any, s: Subject) -> Any:
    """ImportKeyMaterial of the key's own material with the token issued before the move."""
    return kms.import_key_material(KeyId=s.key_id, ImportToken=s.token,
                                   EncryptedKeyMaterial=wrap(WRAPPING, s.public_key, s.material),
                                   ExpirationModel="KEY_MATERIAL_DOES_NOT_EXPIRE")


def _companion_blob(kms: Any, s: Subject) -> bytes:
    blob: bytes = kms.encrypt(KeyId=s.companion, Plaintext=b"c")["CiphertextBlob"]
    return blob


TAG = [{"TagKey": "k", "TagValue": "v"}]
OPS: dict[str, Op] = {
    "CreateGrant": Op("sym", lambda kms, s: kms.create_grant(
        KeyId=s.key_id, GranteePrincipal=GRANTEE, Operations=["Decrypt"])),
    "ListGrants": Op("sym", lambda kms, s: kms.list_grants(KeyId=s.key_id)),
    "RetireGrant": Op("sym", lambda kms, s: kms.retire_grant(KeyId=s.key_id,
                                                             GrantId=s.grant_id), ("grant",)),
    "RevokeGrant": Op("sym", lambda kms, s: kms.revoke_grant(KeyId=s.key_id,
                                                             GrantId=s.grant_id), ("grant",)),
    "CancelKeyDeletion": Op("sym", lambda kms, s: kms.cancel_key_deletion(KeyId=s.key_id)),
    "CreateAlias": Op("sym", lambda kms, s: kms.create_alias(AliasName="alias/new",
                                                             TargetKeyId=s.key_id)),
    "Decrypt": Op("sym", lambda kms, s: kms.decrypt(CiphertextBlob=s.blob), ("blob",)),
    "DeleteAlias": Op("sym", lambda kms, s: kms.delete_alias(AliasName="alias/subject"),
                      ("alias",)),
    "DescribeKey": Op("sym", lambda kms, s: kms.describe_key(KeyId=s.key_id)),
    "DisableKey": Op("sym", lambda kms, s: kms.disable_key(KeyId=s.key_id)),
    "EnableKey": Op("sym", lambda kms, s: kms.enable_key(KeyId=s.key_id)),
    "Encrypt": Op("sym", lambda kms, s: kms.encrypt(KeyId=s.key_id, Plaintext=b"x")),
    "GenerateDataKey": Op("sym", lambda kms, s: kms.generate_data_key(KeyId=s.key_id,
                                                                      KeySpec="AES_256")),
    "GenerateDataKeyWithoutPlaintext": Op(
        "sym", lambda kms, s: kms.generate_data_key_without_plaintext(KeyId=s.key_id,
                                                                      NumberOfBytes=32)),
    "GenerateDataKeyPair": Op("sym", lambda kms, s: kms.generate_data_key_pair(
        KeyId=s.key_id, KeyPairSpec="ECC_NIST_P256")),
    "GenerateDataKeyPairWithoutPlaintext": Op(
        "sym", lambda kms, s: kms.generate_data_key_pair_without_plaintext(
            KeyId=s.key_id, KeyPairSpec="ECC_NIST_P256")),
    "GenerateMac": Op("mac", lambda kms, s: kms.generate_mac(KeyId=s.key_id, Message=b"m",
                                                             MacAlgorithm="HMAC_SHA_256")),
    "VerifyMac": Op("mac", lambda kms, s: kms.verify_mac(KeyId=s.key_id, Message=b"m",
                                                         Mac=s.mac,
                                                         MacAlgorithm="HMAC_SHA_256"),
                    ("mac",)),
    "Sign": Op("sign", lambda kms, s: kms.sign(KeyId=s.key_id, Message=b"m",
                                               SigningAlgorithm="ECDSA_SHA_256")),
    "Verify": Op("sign", lambda kms, s: kms.verify(KeyId=s.key_id, Message=b"m",
                                                   Signature=s.signature,
                                                   SigningAlgorithm="ECDSA_SHA_256"),
                 ("signature",)),
    "GetPublicKey": Op("sign", lambda kms, s: kms.get_public_key(KeyId=s.key_id)),
    "DeriveSharedSecret": Op("agree", lambda kms, s: kms.derive_shared_secret(
        KeyId=s.key_id, KeyAgreementAlgorithm="ECDH", PublicKey=_peer_public_key())),
    "Encapsulate": Op("kem", lambda kms, s: kms.encapsulate(KeyId=s.key_id,
                                                            EncapsulationAlgorithm="ML_KEM")),
    "Decapsulate": Op("kem", lambda kms, s: kms.decapsulate(
        KeyId=s.key_id, EncapsulationAlgorithm="ML_KEM",
        SharedSecretCiphertextBlob=os.urandom(1088))),
    "GetKeyLastUsage": Op("sym", lambda kms, s: kms.get_key_last_usage(KeyId=s.key_id)),
    "ListAliases": Op("sym", lambda kms, s: kms.list_aliases(KeyId=s.key_id), ("alias",)),
    "ListResourceTags": Op("sym", lambda kms, s: kms.list_resource_tags(KeyId=s.key_id)),
    "GetKeyPolicy": Op("sym", lambda kms, s: kms.get_key_policy(KeyId=s.key_id)),
    "ListKeyPolicies": Op("sym", lambda kms, s: kms.list_key_policies(KeyId=s.key_id)),
    "PutKeyPolicy": Op("sym", lambda kms, s: kms.put_key_policy(
        KeyId=s.key_id, Policy=kms.get_key_policy(KeyId=s.key_id)["Policy"])),
    "ReEncrypt": Op("sym", lambda kms, s: kms.re_encrypt(CiphertextBlob=s.blob,
                                                         DestinationKeyId=s.companion),
                    ("blob",)),
    "ReEncrypt(destination)": Op("sym", lambda kms, s: kms.re_encrypt(
        CiphertextBlob=_companion_blob(kms, s), DestinationKeyId=s.key_id)),
    "ReplicateKey": Op("mrk", lambda kms, s: kms.replicate_key(KeyId=s.key_id,
                                                               ReplicaRegion="eu-west-1")),
    "UpdatePrimaryRegion": Op("mrk", lambda kms, s: kms.update_primary_region(
        KeyId=s.key_id, PrimaryRegion="eu-west-1")),
    "ScheduleKeyDeletion": Op("sym", lambda kms, s: kms.schedule_key_deletion(
        KeyId=s.key_id, PendingWindowInDays=7)),
    "TagResource": Op("sym", lambda kms, s: kms.tag_resource(KeyId=s.key_id, Tags=TAG)),
    "UntagResource": Op("sym", lambda kms, s: kms.untag_resource(KeyId=s.key_id,
                                                                 TagKeys=["team"])),
    "UpdateAlias": Op("sym", lambda kms, s: kms.update_alias(AliasName="alias/companion",
                                                             TargetKeyId=s.key_id)),
    "UpdateKeyDescription": Op("sym", lambda kms, s: kms.update_key_description(
        KeyId=s.key_id, Description="new")),
    "EnableKeyRotation": Op("sym", lambda kms, s: kms.enable_key_rotation(KeyId=s.key_id)),
    "DisableKeyRotation": Op("sym", lambda kms, s: kms.disable_key_rotation(KeyId=s.key_id)),
    "GetKeyRotationStatus": Op("sym", lambda kms, s: kms.get_key_rotation_status(
        KeyId=s.key_id)),
    "RotateKeyOnDemand": Op("sym", lambda kms, s: kms.rotate_key_on_demand(KeyId=s.key_id)),
    "ListKeyRotations": Op("sym", lambda kms, s: kms.list_key_rotations(KeyId=s.key_id)),
    "GetParametersForImport": Op("ext", lambda kms, s: kms.get_parameters_for_import(
        KeyId=s.key_id, WrappingAlgorithm=WRAPPING, WrappingKeySpec="RSA_2048")),
    "ImportKeyMaterial": Op("ext", _reimport),
    "DeleteImportedKeyMaterial": Op("ext", lambda kms, s: kms.delete_imported_key_material(
        KeyId=s.key_id)),
}

# The table row each driven call is checked against.
ROW = {name: name.split("(")[0] for name in OPS}

# Appendix B [6]: on an EXTERNAL key (every PendingImport key is one) the rotation
# operations answer UnsupportedOperationException whatever the state column says;
# RotateKeyOnDemand, which imported keys now support, checks the state first.
ORIGIN_EXTERNAL = {"EnableKeyRotation", "DisableKeyRotation", "GetKeyRotationStatus"}

_PHRASE = {KeyState.DISABLED: "is disabled.", KeyState.PENDING_DELETION: "is pending deletion.",
           KeyState.PENDING_IMPORT: "is pending import."}


def expected(state: KeyState, name: str, arn: str) -> tuple[str, str] | None:
    """(error code, message) the table demands, or None for success."""
    if state is KeyState.PENDING_IMPORT and ROW[name] in ORIGIN_EXTERNAL:
        return ("UnsupportedOperationException",
                f"{arn} origin is EXTERNAL which is not valid for this operation.")
    verdict = STATE_RULES[ROW[name]][state]
    if verdict == "ok":
        return None
    if verdict == "dis":
        return "DisabledException", f"{arn} is disabled."
    if verdict == "npd":
        return ("KMSInvalidStateException",
                f"{arn} is not pending deletion (or pending replica deletion).")
    assert verdict == "inv", verdict
    return "KMSInvalidStateException", f"{arn} {_PHRASE[state]}"


def _cases() -> list[Any]:
    cases = []
    for state in STATES:
        for name in sorted(set(STATE_RULES) | set(OPS)):
            marks = []
            if name not in OPS:
                marks.append(pytest.mark.skip(reason=f"{name} is not implemented by this node"))
            cases.append(pytest.param(state, name, marks=marks, id=f"{state.value}-{name}"))
    return cases


@pytest.mark.parametrize(("state", "name"), _cases())
def test_the_state_table_column_by_column(kms: Any, state: KeyState, name: str) -> None:
    op = OPS[name]
    subject = make_subject(kms, state, op)
    want = expected(state, name, subject.arn)

    if want is None:
        op.call(kms, subject)  # the table says OK: it must succeed
        return
    with pytest.raises(ClientError) as info:
        op.call(kms, subject)
    error = info.value.response["Error"]
    assert (error["Code"], error["Message"]) == want
    assert kms.describe_key(KeyId=subject.key_id)["KeyMetadata"]["KeyState"] == state.value


def test_every_implemented_operation_of_the_table_is_driven() -> None:
    """A newly implemented table operation needs a driver in OPS above."""
    implemented = {op for op in STATE_RULES if op in OPERATIONS}
    assert implemented <= set(ROW.values()), implemented - set(ROW.values())


def test_pending_deletion_update_alias_succeeds_when_the_key_is_the_source(kms: Any) -> None:
    """Appendix B [10]: only a *target* pending deletion is refused."""
    subject = make_subject(kms, KeyState.PENDING_DELETION, Op("sym", OPS["UpdateAlias"].call,
                                                              ("alias",)))

    kms.update_alias(AliasName="alias/subject", TargetKeyId=subject.companion)

    assert kms.describe_key(KeyId="alias/subject")["KeyMetadata"]["KeyId"] == subject.companion


# -- STATE_RULES against the reference itself ---------------------------------------------------
_COLUMNS = (KeyState.ENABLED, KeyState.DISABLED, KeyState.PENDING_DELETION,
            KeyState.PENDING_IMPORT, KeyState.UNAVAILABLE, KeyState.CREATING, KeyState.UPDATING)


def _verdict(cell: str) -> str:
    """Appendix B cell -> STATE_RULES verdict. "?" cells depend on the key's origin (the
    state allows them); "N/A" under PendingImport now means [5] (the reference's note)."""
    if cell.startswith(("OK", "?")):
        return "ok"
    notes = set(re.findall(r"\d+", cell))
    if "1" in notes:
        return "dis"
    if "4" in notes:
        return "npd"
    return "inv"


@pytest.mark.skipif(not REFERENCE.exists(), reason="the API reference is not on this machine")
def test_state_rules_encode_appendix_b() -> None:
    text = REFERENCE.read_text()
    table = text[text.index("## Appendix B"):text.index("Footnotes (quoted")]
    rows = [line.strip().strip("|").split("|") for line in table.splitlines()
            if line.startswith("| ") and not line.startswith(("| API", "|---"))]
    assert len(rows) >= 40
    mismatches = []
    for op, *cells in rows:
        op = op.strip()
        for state, cell in zip(_COLUMNS, cells, strict=True):
            cell = cell.strip()
            if state is KeyState.UNAVAILABLE:
                continue  # custom key stores only; this node has none
            if "6" in re.findall(r"\d+", cell) or (op == "UpdateAlias" and "10" in cell):
                continue  # origin rule [6] / source-vs-target rule [10], driven above
            if STATE_RULES[op][state] != _verdict(cell):
                mismatches.append((op, state.value, cell, STATE_RULES[op][state]))
    assert mismatches == []
