"""Failover between separate region processes (the local cluster from compose.yaml): with
the primary's region stopped, replicas keep decrypting and verifying, ``kms region promote``
makes a replica primary under a higher epoch, writes work there at once and reach the other
replica; the old primary returns, demotes itself and refuses stale writes; what it wrote
while cut off is fenced and reported (``kms region conflicts``, one audit fact per region),
never merged or lost. Also the CLI's refusals, and ``admins`` on a non-dev node."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from kms.domain import events as ev
from ops.cluster import Cluster
from tests.conftest import client_for
from tests.support.cluster import AP, EU, ROOT, US, clients_fixture, cluster_fixture, region_cli
from tests.support.expect import eventually, refused
from tests.support.server import ServerProcess

pytestmark = pytest.mark.slow

MESSAGE = b"signed before the outage"


cluster = cluster_fixture("failover")
kms = clients_fixture()


def mr_config(client: Any, key_id: str) -> dict[str, Any]:
    meta = client.describe_key(KeyId=key_id)["KeyMetadata"]
    return meta["MultiRegionConfiguration"]  # type: ignore[no-any-return]


def primary_seen_in(client: Any, key_id: str) -> str:
    return str(mr_config(client, key_id)["PrimaryKey"]["Region"])


def enabled(client: Any, key_id: str) -> bool:
    return bool(client.describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"] == "Enabled")


def mrk_in_us(kms: dict[str, Any], **create: Any) -> str:
    """A multi-region key made in us-east-1 and replicated to both other regions."""
    key_id = str(kms[US].create_key(MultiRegion=True, **create)["KeyMetadata"]["KeyId"])
    for region in (EU, AP):
        kms[US].replicate_key(KeyId=key_id, ReplicaRegion=region)
        eventually(lambda r=region: enabled(kms[r], key_id), f"the replica in {region}")
    return key_id


def decrypts(client: Any, blob: bytes, plaintext: bytes) -> bool:
    return bool(client.decrypt(CiphertextBlob=blob)["Plaintext"] == plaintext)


def audit_operations(data_dir: Path) -> list[tuple[str, tuple[str, ...], dict[str, Any]]]:
    """(operation, resources, additional) of every audit fact in a node's log."""
    with sqlite3.connect(f"file:{data_dir / 'events.sqlite3'}?mode=ro", uri=True) as db:
        rows = db.execute("SELECT type, body FROM events WHERE stream = 'audit'").fetchall()
    out = []
    for type_name, body in rows:
        fact = ev.decode(type_name, body)
        assert isinstance(fact, ev.ApiCallRecorded)
        out.append((fact.operation, fact.resources, dict(fact.additional)))
    return out


@pytest.fixture(scope="module")
def failed_over(cluster: Cluster, kms: dict[str, Any]) -> dict[str, Any]:
    """Two keys made in us-east-1 (symmetric, ECC signing), ciphertexts and a signature
    made there, then us-east-1 stopped."""
    sym = mrk_in_us(kms)
    sig = mrk_in_us(kms, KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")
    blobs = [(kms[US].encrypt(KeyId=sym, Plaintext=b"before %d" % i)["CiphertextBlob"],
              b"before %d" % i) for i in range(5)]
    signature = kms[US].sign(KeyId=sig, Message=MESSAGE, SigningAlgorithm="ECDSA_SHA_256",
                             MessageType="RAW")["Signature"]
    assert cluster.stop(US) == "stopped"
    return {"sym": sym, "sig": sig, "blobs": blobs, "signature": signature}


def test_replicas_serve_while_the_primary_is_down_and_promotion_moves_the_primary(
        cluster: Cluster, kms: dict[str, Any], failed_over: dict[str, Any]) -> None:
    sym, sig = failed_over["sym"], failed_over["sig"]
    for region in (EU, AP):
        assert sum(decrypts(kms[region], b, p) for b, p in failed_over["blobs"]) == 5
        assert kms[region].verify(KeyId=sig, Message=MESSAGE, MessageType="RAW",
                                  Signature=failed_over["signature"],
                                  SigningAlgorithm="ECDSA_SHA_256")["SignatureValid"]
    # Rotation in a replica is refused as AWS refuses it, before promotion.
    refused(kms[EU].rotate_key_on_demand, "UnsupportedOperationException", KeyId=sym)

    done = region_cli("promote", "--endpoint", cluster.urls[EU], sym)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"promoted {sym} to primary in {EU} (epoch 2)\n"
    config = mr_config(kms[EU], sym)
    assert config["MultiRegionKeyType"] == "PRIMARY"
    assert {r["Region"] for r in config["ReplicaKeys"]} == {US, AP}
    eventually(lambda: primary_seen_in(kms[AP], sym) == EU, "ap-southeast-2 to follow")
    assert mr_config(kms[AP], sym)["MultiRegionKeyType"] == "REPLICA"

    as_json = region_cli("promote", "--endpoint", cluster.urls[EU], "--json", sig)
    assert as_json.returncode == 0, as_json.stderr
    assert '"Epoch": 2' in as_json.stdout and f'"PrimaryRegion": "{EU}"' in as_json.stdout


def test_writes_work_in_the_new_primary_at_once_and_reach_the_other_replica(
        cluster: Cluster, kms: dict[str, Any], failed_over: dict[str, Any]) -> None:
    sym = failed_over["sym"]
    kms[EU].rotate_key_on_demand(KeyId=sym)
    blob = kms[EU].encrypt(KeyId=sym, Plaintext=b"after promotion")["CiphertextBlob"]
    assert eventually(lambda: decrypts(kms[AP], blob, b"after promotion"),
                      "the new version in ap-southeast-2")
    rotations = kms[AP].list_key_rotations(KeyId=sym)["Rotations"]
    assert [r["RotationType"] for r in rotations] == ["ON_DEMAND"]
    failed_over["after"] = blob

    # ReplicateKey from the promoted primary (to a region its --dev node hosts): the new
    # replica gets every version, the old primary's too, and verifies the old signature.
    sig = failed_over["sig"]
    out = kms[EU].replicate_key(KeyId=sig, ReplicaRegion="sa-east-1")
    assert out["ReplicaKeyMetadata"]["KeyState"] == "Creating"
    sa = client_for(cluster.urls[EU], region="sa-east-1")
    eventually(lambda: enabled(sa, sig), "the replica in sa-east-1")
    assert sa.verify(KeyId=sig, Message=MESSAGE, MessageType="RAW",
                     Signature=failed_over["signature"],
                     SigningAlgorithm="ECDSA_SHA_256")["SignatureValid"]


def test_the_old_primary_returns_demoted_and_refuses_stale_writes(
        cluster: Cluster, kms: dict[str, Any], failed_over: dict[str, Any]) -> None:
    sym = failed_over["sym"]
    cluster.start(US, ROOT)
    eventually(lambda: primary_seen_in(kms[US], sym) == EU, "us-east-1 to demote itself")
    for region in (US, EU, AP):
        config = mr_config(kms[region], sym)
        assert config["PrimaryKey"]["Region"] == EU
        assert {r["Region"] for r in config["ReplicaKeys"]} == {US, AP}
    assert mr_config(kms[US], sym)["MultiRegionKeyType"] == "REPLICA"
    assert eventually(lambda: decrypts(kms[US], failed_over["after"], b"after promotion"),
                      "us-east-1 to take the new primary's version")
    assert sum(decrypts(kms[US], b, p) for b, p in failed_over["blobs"]) == 5
    us_arn = f"arn:aws:kms:{US}:111122223333:key/{sym}"
    eu_arn = f"arn:aws:kms:{EU}:111122223333:key/{sym}"
    refused(kms[US].rotate_key_on_demand, "UnsupportedOperationException",
            f"{us_arn} is not a multi-Region primary key. RotateKeyOnDemand is not supported "
            f"on multi-Region replica keys; call it on the primary key {eu_arn}.", KeyId=sym)
    refused(kms[US].replicate_key, "UnsupportedOperationException", KeyId=sym,
            ReplicaRegion="sa-east-1")
    refused(kms[US].update_primary_region, "UnsupportedOperationException", KeyId=sym,
            PrimaryRegion=US)
    # The handover works from the promoted primary.
    kms[EU].update_primary_region(KeyId=sym, PrimaryRegion=AP)
    eventually(lambda: all(primary_seen_in(kms[r], sym) == AP for r in (US, EU, AP)),
               "every region to see ap-southeast-2 primary")
    eventually(lambda: all(enabled(kms[r], sym) for r in (US, EU, AP)), "the handover to end")


def test_a_write_acknowledged_while_cut_off_is_fenced_and_reported_not_merged(
        cluster: Cluster, kms: dict[str, Any]) -> None:
    key = mrk_in_us(kms)
    blobs = [(kms[US].encrypt(KeyId=key, Plaintext=b"old %d" % i)["CiphertextBlob"],
              b"old %d" % i) for i in range(4)]
    assert cluster.stop(EU) == "stopped"
    assert cluster.stop(AP) == "stopped"
    kms[US].rotate_key_on_demand(KeyId=key)  # acknowledged with nobody to hear it
    cut_off = [(kms[US].encrypt(KeyId=key, Plaintext=b"cut off %d" % i)["CiphertextBlob"],
                b"cut off %d" % i) for i in range(3)]
    assert cluster.stop(US) == "stopped"
    cluster.start(EU, ROOT)
    cluster.start(AP, ROOT)
    done = region_cli("promote", "--endpoint", cluster.urls[AP], key)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"promoted {key} to primary in {AP} (epoch 2)\n"
    eventually(lambda: primary_seen_in(kms[EU], key) == AP, "eu-west-1 to follow")
    cluster.start(US, ROOT)  # the old primary returns: the partition heals

    eventually(lambda: all(primary_seen_in(kms[r], key) == AP for r in (US, EU, AP)),
               "DescribeKey to converge")

    def listed(region: str) -> list[dict[str, Any]]:
        out = region_cli("conflicts", "--endpoint", cluster.urls[region], "--json")
        assert out.returncode == 0, out.stderr
        return [c for c in json.loads(out.stdout)["Conflicts"] if c["KeyId"] == key]

    for region in (US, EU, AP):
        found = eventually(lambda r=region: [c for c in listed(r) if c["Audited"]],
                           f"the conflict reported in {region}")
        assert [(c["Region"], c["Epoch"], c["EventType"], c["FencedByEpoch"],
                 c["PrimaryRegion"]) for c in found] == [(US, 1, "MaterialShared", 2, AP)]
        assert found[0]["OriginSeq"] > 0 and found[0]["Time"] > 0
    text = region_cli("conflicts", "--endpoint", cluster.urls[AP])
    assert text.returncode == 0
    assert f"{key}: MaterialShared written in {US} under epoch 1" in text.stdout
    assert f"fenced by epoch 2, primary {AP}" in text.stdout

    # The fenced rotation never reached the new primary's shared side: AP has one version.
    assert kms[AP].list_key_rotations(KeyId=key)["Rotations"] == []
    # ... and the old primary lists what every member lists, not its fenced rotation
    # (reported above, never passed off as the key's).
    for region in (US, EU):
        assert kms[region].list_key_rotations(KeyId=key)["Rotations"] == [], region
    # No data lost: every ciphertext decrypts where its material exists.
    for region in (US, EU, AP):
        assert sum(decrypts(kms[region], b, p) for b, p in blobs) == 4, region
    assert sum(decrypts(kms[US], b, p) for b, p in cut_off) == 3
    # The old primary encrypts under a shared version again: what it makes now decrypts
    # in the new primary.
    healed = kms[US].encrypt(KeyId=key, Plaintext=b"after heal")["CiphertextBlob"]
    assert decrypts(kms[AP], healed, b"after heal")

    # One audit fact per conflict and region, not one per restart.
    cluster.stop(US)
    cluster.start(US, ROOT)
    eventually(lambda: primary_seen_in(kms[US], key) == AP, "us-east-1 back")
    for region in (US, EU, AP):
        facts = [(resources, additional) for op, resources, additional
                 in audit_operations(cluster.state_dir / region)
                 if op == "MultiRegionConflictDetected"
                 and resources == (f"arn:aws:kms:{region}:111122223333:key/{key}",)]
        assert len(facts) == 1, (region, facts)
        assert facts[0][1]["conflictOriginRegion"] == US
        assert facts[0][1]["conflictEventType"] == "MaterialShared"


def test_promote_refusals_are_clear_errors_and_exit_status_1(
        cluster: Cluster, kms: dict[str, Any]) -> None:
    single = kms[EU].create_key()["KeyMetadata"]["KeyId"]
    out = region_cli("promote", "--endpoint", cluster.urls[EU], single)
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr == (f"kms region: error: UnsupportedOperationException: arn:aws:kms:"
                          f"{EU}:111122223333:key/{single} is not a multi-Region key. Only a "
                          "multi-Region replica key can be promoted.\n")

    primary = kms[EU].create_key(MultiRegion=True)["KeyMetadata"]["KeyId"]
    out = region_cli("promote", "--endpoint", cluster.urls[EU], primary)
    assert out.returncode == 1
    assert out.stderr == (f"kms region: error: UnsupportedOperationException: arn:aws:kms:"
                          f"{EU}:111122223333:key/{primary} is already the primary key in "
                          f"{EU} (epoch 1).\n")

    def no_replica() -> str | None:
        out = region_cli("promote", "--endpoint", cluster.urls[AP], primary)
        assert out.returncode == 1
        return out.stderr if "holds no replica" in out.stderr else None

    assert eventually(no_replica, "ap-southeast-2 to know the key") == (
        f"kms region: error: NotFoundException: Region {AP} holds no replica of multi-Region "
        f"key {primary} (its regions: {EU}).\n")

    out = region_cli("promote", "--endpoint", cluster.urls[EU], "mrk-" + "0" * 32)
    assert out.returncode == 1
    assert out.stderr == ("kms region: error: NotFoundException: Key 'mrk-" + "0" * 32
                          + "' does not exist\n")
    with pytest.raises(ClientError):  # nothing was created by the refusals
        kms[AP].describe_key(KeyId=primary)


OPS_ARN = "arn:aws:iam::111122223333:user/ops"
DEV_ARN = "arn:aws:iam::111122223333:user/dev"


def test_admin_actions_on_a_non_dev_node_need_a_principal_named_in_admins(
        tmp_path: Path) -> None:
    config = tmp_path / "kms.toml"
    config.write_text(f'''admins = ["{OPS_ARN}"]

[[principals]]
arn = "{OPS_ARN}"
access_key_id = "AKIAOPSOPSOPSOPS0001"
secret_access_key = "ops-secret"

[[principals]]
arn = "{DEV_ARN}"
access_key_id = "AKIADEVDEVDEVDEV0001"
secret_access_key = "dev-secret"
''')
    node = ServerProcess(tmp_path / "data", dev=False, extra=["--config", str(config)])
    node.start()
    try:
        as_dev = ["--access-key", "AKIADEVDEVDEVDEV0001", "--secret-key", "dev-secret"]
        as_ops = ["--access-key", "AKIAOPSOPSOPSOPS0001", "--secret-key", "ops-secret"]
        for args in (["promote", "--endpoint", node.url, *as_dev, "mrk-" + "1" * 32],
                     ["conflicts", "--endpoint", node.url, *as_dev]):
            out = region_cli(*args)
            assert out.returncode == 1
            assert out.stderr == (f"kms region: error: AccessDeniedException: User: {DEV_ARN} "
                                  "is not authorized to perform region administration on this "
                                  "node: it is not named in admins\n")
        unsigned = region_cli("conflicts", "--endpoint", node.url)
        assert unsigned.returncode == 1
        assert "MissingAuthenticationTokenException" in unsigned.stderr
        wrong_secret = region_cli("conflicts", "--endpoint", node.url, "--access-key",
                                  "AKIAOPSOPSOPSOPS0001", "--secret-key", "not-it")
        assert wrong_secret.returncode == 1
        assert "SignatureDoesNotMatch" in wrong_secret.stderr or \
            "InvalidSignature" in wrong_secret.stderr
        listed = region_cli("conflicts", "--endpoint", node.url, *as_ops)
        assert (listed.returncode, listed.stdout) == (0, f"no conflicts in {US}\n")
        out = region_cli("promote", "--endpoint", node.url, *as_ops, "mrk-" + "1" * 32)
        assert out.returncode == 1  # authorized: refused for the key, not the caller
        assert out.stderr == ("kms region: error: NotFoundException: Key 'mrk-" + "1" * 32
                              + "' does not exist\n")
    finally:
        node.stop()
