"""What each audit record says: AWS's CloudTrail shapes per operation family, an unknown
operation, service events (rotation, deletion, a replica region's creation and sync), and
nothing secret in any record or log line.
"""

from __future__ import annotations

import base64
import gzip
import json
import re
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.conftest import ACCOUNT, REGION, client_for
from tests.support.audit_stream import (
    AWS_DATE,
    EVENT_TIME,
    by_request,
    calls,
    read_all,
)
from tests.support.expect import eventually
from tests.support.server import ServerProcess


@pytest.fixture
def node(tmp_path: Path) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp_path / "d", log_path=tmp_path / "node.log").start()
    yield server
    server.stop()


# -- what each record says ----------------------------------------------------------------
def test_records_of_each_operation_family_have_awss_shapes(server: ServerProcess, kms: Any,
                                                           raw_kms: Any) -> None:
    created = kms.create_key(Description="audited", Tags=[{"TagKey": "t", "TagValue": "v"}])
    arn, key_id = created["KeyMetadata"]["Arn"], created["KeyMetadata"]["KeyId"]
    enc = kms.encrypt(KeyId=key_id, Plaintext=b"x", EncryptionContext={"Dept": "Eng"})
    dec = kms.decrypt(CiphertextBlob=enc["CiphertextBlob"], EncryptionContext={"Dept": "Eng"})
    gdk = kms.generate_data_key(KeyId=key_id, KeySpec="AES_256")
    signing = kms.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]
    sign = kms.sign(KeyId=signing["KeyId"], Message=b"m", SigningAlgorithm="ECDSA_SHA_256")
    alias = kms.create_alias(AliasName="alias/audited", TargetKeyId=key_id)
    tag = kms.tag_resource(KeyId=key_id, Tags=[{"TagKey": "k2", "TagValue": "v2"}])
    kms.disable_key(KeyId=key_id)
    with pytest.raises(ClientError) as failed:
        kms.encrypt(KeyId=key_id, Plaintext=b"x")
    with pytest.raises(ClientError) as invalid:
        raw_kms.generate_random(NumberOfBytes=2000)
    sched = kms.schedule_key_deletion(KeyId=key_id, PendingWindowInDays=7)
    records = read_all(server.url)

    for r in calls(records):
        assert r["eventVersion"] == "1.11" and r["eventSource"] == "kms.amazonaws.com"
        assert EVENT_TIME.match(r["eventTime"]) and r["awsRegion"] == REGION
        assert r["userIdentity"]["type"] == "Root"
        assert r["userIdentity"]["arn"] == f"arn:aws:iam::{ACCOUNT}:root"
        assert r["eventType"] == "AwsApiCall" and r["managementEvent"] is True
        assert r["eventCategory"] == "Management" and r["recipientAccountId"] == ACCOUNT
        assert r["sourceIPAddress"] == "127.0.0.1" and r["userAgent"].startswith("Boto3/")

    r = by_request(records, created)
    assert r["requestParameters"] == {
        "description": "audited", "tags": [{"tagKey": "t", "tagValue": "v"}],
        "keySpec": "SYMMETRIC_DEFAULT", "customerMasterKeySpec": "SYMMETRIC_DEFAULT",
        "keyUsage": "ENCRYPT_DECRYPT", "origin": "AWS_KMS",
        "bypassPolicyLockoutSafetyCheck": False}
    md = r["responseElements"]["keyMetadata"]
    assert (md["keyId"], md["arn"], md["keyState"], md["description"]) == \
        (key_id, arn, "Enabled", "audited")
    assert AWS_DATE.match(md["creationDate"]) and r["readOnly"] is False

    r = by_request(records, enc)
    assert r["requestParameters"] == {"keyId": key_id, "encryptionContext": {"Dept": "Eng"},
                                      "encryptionAlgorithm": "SYMMETRIC_DEFAULT"}
    assert r["responseElements"] is None and r["readOnly"] is True
    assert re.fullmatch(r"[0-9a-f]{64}", r["additionalEventData"]["keyMaterialId"])
    assert r["resources"] == [{"accountId": ACCOUNT, "type": "AWS::KMS::Key", "ARN": arn}]

    r = by_request(records, dec)
    assert r["requestParameters"] == {"encryptionContext": {"Dept": "Eng"},
                                      "encryptionAlgorithm": "SYMMETRIC_DEFAULT"}
    assert r["responseElements"] is None and r["resources"][0]["ARN"] == arn

    r = by_request(records, gdk)
    assert r["requestParameters"] == {"keyId": key_id, "keySpec": "AES_256"}
    assert r["responseElements"] is None

    r = by_request(records, sign)
    assert r["requestParameters"] == {"keyId": signing["KeyId"],
                                      "signingAlgorithm": "ECDSA_SHA_256"}
    assert r["responseElements"] is None

    r = by_request(records, alias)
    assert r["requestParameters"] == {"aliasName": "alias/audited", "targetKeyId": key_id}
    assert r["responseElements"] is None and r["readOnly"] is False

    r = by_request(records, tag)
    assert r["requestParameters"] == {"keyId": key_id,
                                      "tags": [{"tagKey": "k2", "tagValue": "v2"}]}
    assert r["responseElements"] is None

    r = by_request(records, failed.value)
    assert r["errorCode"] == "DisabledException"
    assert r["errorMessage"] == failed.value.response["Error"]["Message"]
    assert r["responseElements"] is None and r["resources"][0]["ARN"] == arn

    r = by_request(records, invalid.value)
    assert r["eventName"] == "GenerateRandom" and r["errorCode"] == "ValidationException"
    assert r["errorMessage"] == invalid.value.response["Error"]["Message"]
    assert r["requestParameters"] is None

    r = by_request(records, sched)
    assert r["requestParameters"] == {"keyId": key_id, "pendingWindowInDays": 7}
    elements = r["responseElements"]
    assert (elements["keyId"], elements["keyState"], elements["pendingWindowInDays"]) == \
        (arn, "PendingDeletion", 7)
    assert AWS_DATE.match(elements["deletionDate"])


def test_an_unknown_operation_is_recorded(server: ServerProcess) -> None:
    req = urllib.request.Request(server.url + "/", data=b"{}", method="POST", headers={
        "X-Amz-Target": "TrentService.NoSuchThing",
        "Content-Type": "application/x-amz-json-1.1"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=10)
    request_id = err.value.headers["x-amzn-RequestId"]
    r = [r for r in read_all(server.url) if r["requestID"] == request_id]
    assert [(x["eventName"], x["errorCode"]) for x in r] == \
        [("NoSuchThing", "UnknownOperationException")]


def test_service_events_are_aws_service_event_records(server: ServerProcess, kms: Any) -> None:
    key = kms.create_key()["KeyMetadata"]
    kms.enable_key_rotation(KeyId=key["KeyId"], RotationPeriodInDays=90)
    kms.schedule_key_deletion(KeyId=key["KeyId"], PendingWindowInDays=7)
    kms.cancel_key_deletion(KeyId=key["KeyId"])
    kms.enable_key(KeyId=key["KeyId"])
    server.post("/_kms/clock", {"advance_seconds": 91 * 86400})
    kms.schedule_key_deletion(KeyId=key["KeyId"], PendingWindowInDays=7)
    server.post("/_kms/clock", {"advance_seconds": 8 * 86400})
    service = [r for r in read_all(server.url) if r["eventType"] == "AwsServiceEvent"]
    assert [r["eventName"] for r in service] == ["RotateKey", "DeleteKey"]
    for r in service:
        assert r["userIdentity"] == {"accountId": ACCOUNT, "invokedBy": "AWS Internal"}
        assert r["sourceIPAddress"] == r["userAgent"] == "AWS Internal"
        assert r["requestParameters"] is None and r["responseElements"] is None
        assert r["serviceEventDetails"]["keyId"] == key["KeyId"]
        assert r["resources"][0]["ARN"] == key["Arn"] and r["readOnly"] is False
    assert service[0]["serviceEventDetails"]["rotationType"] == "AUTOMATIC"


def test_a_replica_region_records_its_replica_s_creation_and_sync(server: ServerProcess,
                                                                   kms: Any) -> None:
    primary = kms.create_key(MultiRegion=True)["KeyMetadata"]
    replicated = kms.replicate_key(KeyId=primary["KeyId"], ReplicaRegion="eu-west-1")
    replica_arn = replicated["ReplicaKeyMetadata"]["Arn"]

    def replica_records() -> list[dict[str, Any]]:
        got = [r for r in read_all(server.url, region="eu-west-1")
               if r["eventType"] == "AwsServiceEvent"]
        return got if {"CreateKey", "SynchronizeMultiRegionKey"} <= \
            {r["eventName"] for r in got} else []

    records = eventually(replica_records, "the replica's service records")
    for r in records:
        assert r["awsRegion"] == "eu-west-1"
        assert r["userIdentity"] == {"accountId": ACCOUNT, "invokedBy": "AWS Internal"}
        assert r["resources"][0]["ARN"] == replica_arn
    primary_side = by_request(read_all(server.url), replicated)
    assert primary_side["eventName"] == "ReplicateKey"
    assert primary_side["requestParameters"] == {"keyId": primary["KeyId"],
                                                 "replicaRegion": "eu-west-1"}
    assert primary_side["responseElements"]["replicaKeyMetadata"]["arn"] == replica_arn


# -- no secrets ---------------------------------------------------------------------------
def test_no_plaintext_data_key_or_material_in_any_record_or_log_line(node: ServerProcess,
                                                                      ) -> None:
    kms = client_for(node.url)
    key_id = kms.create_key()["KeyMetadata"]["KeyId"]
    plaintext = b"the-plaintext-nobody-may-see-7c1f"
    blob = kms.encrypt(KeyId=key_id, Plaintext=plaintext)["CiphertextBlob"]
    assert kms.decrypt(CiphertextBlob=blob)["Plaintext"] == plaintext
    data_key = kms.generate_data_key(KeyId=key_id, KeySpec="AES_256")
    pair = kms.generate_data_key_pair(KeyId=key_id, KeyPairSpec="ECC_NIST_P256")
    mac_key = kms.create_key(KeySpec="HMAC_256", KeyUsage="GENERATE_VERIFY_MAC")["KeyMetadata"]
    message = b"a-message-to-mac-9d2e"
    mac = kms.generate_mac(KeyId=mac_key["KeyId"], Message=message,
                           MacAlgorithm="HMAC_SHA_256")["Mac"]
    random = kms.generate_random(NumberOfBytes=32)["Plaintext"]
    secrets = [plaintext, message, data_key["Plaintext"], data_key["CiphertextBlob"], blob,
               pair["PrivateKeyPlaintext"], pair["PublicKey"], mac, random]
    records = json.dumps(read_all(node.url))
    logs = (node.log_path or Path()).read_text()
    assert len(calls(json.loads(records))) == 8
    out = node.data_dir.parent / "export"  # and the export: every file, log and digest
    exported = subprocess.run([sys.executable, "-m", "regions.cli", "audit", "export",
                               "--data-dir", str(node.data_dir), "--to", str(out)],
                              capture_output=True, text=True, timeout=300)
    assert exported.returncode == 0, exported.stderr
    files = [f for f in out.rglob("*") if f.is_file()]
    assert any(f.name.endswith(".json.gz") and "CloudTrail-Digest" not in str(f) for f in files)
    export = "".join((gzip.decompress(f.read_bytes()) if f.suffix == ".gz"
                      else f.read_bytes()).decode("latin-1") for f in files)
    assert "Encrypt" in export and "GenerateDataKeyPair" in export
    for secret in secrets:
        for form in (secret, base64.b64encode(secret), secret.hex().encode()):
            text = form.decode("latin-1")
            assert text not in records and text not in logs and text not in export
