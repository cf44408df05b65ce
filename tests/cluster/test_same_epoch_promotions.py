"""Two promotions at the same epoch, between separate region processes: with the primary's
region down, an operator promotes eu-west-1 while ap-southeast-2 is down too, then
ap-southeast-2 while eu-west-1 is down, so neither heard of the other and both take epoch 2
and rotate. Once all three run again every region picks the same primary, (epoch, region
name) ordering them: eu-west-1; ap-southeast-2 turns replica, and what it wrote under the
epoch it lost is fenced and reported as a conflict (``kms region conflicts``, one audit
fact per region), like an old primary's; no ciphertext is lost."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ops.cluster import Cluster
from tests.cluster.test_failover import audit_operations, decrypts, mrk_in_us, primary_seen_in
from tests.support.cluster import AP, EU, ROOT, US, clients_fixture, cluster_fixture, region_cli
from tests.support.expect import eventually, refused

pytestmark = pytest.mark.slow



cluster = cluster_fixture("same-epoch")
kms = clients_fixture()


def promote(cluster: Cluster, region: str, key: str) -> None:
    done = region_cli("promote", "--endpoint", cluster.urls[region], key)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"promoted {key} to primary in {region} (epoch 2)\n"


def test_two_promotions_at_one_epoch_converge_on_one_primary_and_the_loser_is_fenced(
        cluster: Cluster, kms: dict[str, Any]) -> None:
    key = mrk_in_us(kms)
    before = [(kms[US].encrypt(KeyId=key, Plaintext=b"old %d" % i)["CiphertextBlob"],
               b"old %d" % i) for i in range(3)]
    assert cluster.stop(US) == "stopped"

    assert cluster.stop(AP) == "stopped"
    promote(cluster, EU, key)
    kms[EU].rotate_key_on_demand(KeyId=key)
    from_eu = kms[EU].encrypt(KeyId=key, Plaintext=b"eu at epoch 2")["CiphertextBlob"]
    assert cluster.stop(EU) == "stopped"

    cluster.start(AP, ROOT)
    promote(cluster, AP, key)  # it never heard of eu-west-1's: epoch 2 too
    kms[AP].rotate_key_on_demand(KeyId=key)
    from_ap = kms[AP].encrypt(KeyId=key, Plaintext=b"ap at epoch 2")["CiphertextBlob"]

    cluster.start(EU, ROOT)
    cluster.start(US, ROOT)
    eventually(lambda: all(primary_seen_in(kms[r], key) == EU for r in (US, EU, AP)),
               "every region to pick eu-west-1", deadline_s=30)
    config = kms[AP].describe_key(KeyId=key)["KeyMetadata"]["MultiRegionConfiguration"]
    assert config["MultiRegionKeyType"] == "REPLICA"
    assert {r["Region"] for r in config["ReplicaKeys"]} == {US, AP}
    ap_arn = f"arn:aws:kms:{AP}:111122223333:key/{key}"
    eu_arn = f"arn:aws:kms:{EU}:111122223333:key/{key}"
    refused(kms[AP].rotate_key_on_demand, "UnsupportedOperationException",
            f"{ap_arn} is not a multi-Region primary key. RotateKeyOnDemand is not supported "
            f"on multi-Region replica keys; call it on the primary key {eu_arn}.", KeyId=key)

    def listed(region: str) -> list[dict[str, Any]]:
        out = region_cli("conflicts", "--endpoint", cluster.urls[region], "--json")
        assert out.returncode == 0, out.stderr
        return [c for c in json.loads(out.stdout)["Conflicts"]
                if c["KeyId"] == key and c["Region"] == AP]

    for region in (US, EU, AP):
        found = eventually(lambda r=region: [c for c in listed(r) if c["Audited"]],
                           f"ap-southeast-2's rotation reported in {region}", deadline_s=30)
        assert [(c["Epoch"], c["EventType"], c["FencedByEpoch"], c["PrimaryRegion"])
                for c in found] == [(2, "MaterialShared", 2, EU)]
        facts = [additional for op, resources, additional
                 in audit_operations(cluster.state_dir / region)
                 if op == "MultiRegionConflictDetected"
                 and resources == (f"arn:aws:kms:{region}:111122223333:key/{key}",)
                 and additional["conflictOriginRegion"] == AP]
        assert len(facts) == 1, (region, facts)

    # Every member lists the winner's one rotation; nothing is lost: the loser still
    # decrypts what it encrypted, the winner's ciphertext decrypts everywhere, and what the
    # loser encrypts now decrypts in the winner.
    def rotations(region: str) -> list[dict[str, Any]]:
        return [{k: v for k, v in r.items() if k != "KeyId"}  # KeyId: the region's ARN
                for r in kms[region].list_key_rotations(KeyId=key)["Rotations"]]

    eu_rotations = rotations(EU)
    assert len(eu_rotations) == 1
    for region in (US, AP):
        eventually(lambda r=region: rotations(r) == eu_rotations,
                   f"{region} to list the winner's rotation")
    for region in (US, EU, AP):
        assert sum(decrypts(kms[region], b, p) for b, p in before) == 3, region
        assert eventually(lambda r=region: decrypts(kms[r], from_eu, b"eu at epoch 2"),
                          f"the winner's version in {region}")
    assert decrypts(kms[AP], from_ap, b"ap at epoch 2")
    healed = kms[AP].encrypt(KeyId=key, Plaintext=b"after heal")["CiphertextBlob"]
    assert decrypts(kms[EU], healed, b"after heal")
