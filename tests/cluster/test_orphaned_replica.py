"""The key a same-epoch promotion's loser replicated, between four separate region
processes: with us-east-1 (the primary) down, eu-west-1 is promoted while ap-southeast-2 and
ap-northeast-1 are down, then ap-southeast-2 while eu-west-1 is down; ap-southeast-2 (which
loses the tie to eu-west-1) rotates and replicates the key to ap-northeast-1, which never
held it. Once all
run again that replica's ``ReplicaAdded`` is fenced: ap-northeast-1 keeps the key (nothing
deletes key material), ``kms region conflicts`` there names it orphaned with what to do,
it goes back to encrypting under a version the members hold, and the winner's ReplicateKey
makes it a member again."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from ops.cluster import Cluster
from tests.cluster.test_failover import decrypts, mrk_in_us, primary_seen_in
from tests.cluster.test_same_epoch_promotions import promote
from tests.conftest import client_for
from tests.support.cluster import AP, EU, ROOT, US, region_cli
from tests.support.expect import eventually

pytestmark = pytest.mark.slow

NE = "ap-northeast-1"
REGIONS = (US, EU, AP, NE)


def four_regions(path: Path) -> Path:
    """compose.yaml's shape with a fourth region, every node a peer of every other."""
    services = []
    for region in REGIONS:
        peers = "".join(f', "--peer", "{r}=http://{r}:8080"' for r in REGIONS if r != region)
        services.append(f'''  {region}:
    image: kms-selfhosted:dev
    command: ["serve", "--host", "0.0.0.0", "--port", "8080", "--region", "{region}",
              "--data-dir", "/data", "--dev"{peers}]
    volumes: ["{region}-data:/data"]
''')
    # The project's entry point (the image's ENTRYPOINT) is read from its pyproject.toml.
    (path.parent / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    path.write_text("services:\n" + "".join(services) + "volumes:\n"
                    + "".join(f"  {r}-data:\n" for r in REGIONS))
    return path


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("orphan")
    # The compose file is outside the checkout: its nodes import kms from the checkout.
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(ROOT) + (os.pathsep + old if old else "")
    try:
        started = Cluster.up(four_regions(tmp / "compose.yaml"), tmp / "state")
    finally:
        if old is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = old
    try:
        yield started
    finally:
        started.down(quiet=True)


@pytest.fixture(scope="module")
def kms(cluster: Cluster) -> dict[str, Any]:
    return {r: client_for(url, region=r) for r, url in cluster.urls.items()}


def current(client: Any, key: str) -> str:
    return str(client.describe_key(KeyId=key)["KeyMetadata"]["CurrentKeyMaterialId"])


def members(client: Any, key: str) -> set[str]:
    config = client.describe_key(KeyId=key)["KeyMetadata"]["MultiRegionConfiguration"]
    return {config["PrimaryKey"]["Region"], *(r["Region"] for r in config["ReplicaKeys"])}


def conflicts_in(cluster: Cluster, region: str) -> dict[str, Any]:
    out = region_cli("conflicts", "--endpoint", cluster.urls[region], "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def start(cluster: Cluster, region: str) -> None:
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = str(ROOT) + (os.pathsep + old if old else "")
    try:
        cluster.start(region, ROOT)
    finally:
        if old is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = old


def test_the_losers_replica_is_kept_reported_and_can_be_adopted_by_the_winner(
        cluster: Cluster, kms: dict[str, Any]) -> None:
    key = mrk_in_us(kms)
    shared = current(kms[US], key)
    before = kms[US].encrypt(KeyId=key, Plaintext=b"before")["CiphertextBlob"]
    assert cluster.stop(US) == "stopped"
    for region in (AP, NE):  # neither hears of eu-west-1's promotion
        assert cluster.stop(region) == "stopped"
    promote(cluster, EU, key)
    kms[EU].rotate_key_on_demand(KeyId=key)
    assert cluster.stop(EU) == "stopped"

    start(cluster, AP)
    start(cluster, NE)
    promote(cluster, AP, key)  # epoch 2 too: it loses the tie to eu-west-1
    kms[AP].rotate_key_on_demand(KeyId=key)
    kms[AP].replicate_key(KeyId=key, ReplicaRegion=NE)
    eventually(lambda: kms[NE].describe_key(KeyId=key)["KeyMetadata"]["KeyState"] == "Enabled",
               "the loser's replica in ap-northeast-1")
    ap_version = current(kms[AP], key)
    assert current(kms[NE], key) == ap_version
    from_ne = kms[NE].encrypt(KeyId=key, Plaintext=b"ne under the loser")["CiphertextBlob"]

    start(cluster, EU)
    start(cluster, US)
    eventually(lambda: all(primary_seen_in(kms[r], key) == EU for r in REGIONS),
               "every region to pick eu-west-1")
    for region in (US, EU, AP):
        eventually(lambda r=region: members(kms[r], key) == {US, EU, AP},
                   f"{region} not to list ap-northeast-1")

    # Kept, named orphaned with what to do, and back on a version every member holds.
    orphan = eventually(lambda: conflicts_in(cluster, NE)["Orphans"],
                        "ap-northeast-1 to report its orphaned key")
    hint = (f"The key in {NE} is not a member of its multi-Region key: the primary that "
            "replicated it here lost its epoch. It keeps its material and still decrypts what "
            f"it encrypted, but no longer follows the primary. ReplicateKey from {EU} to {NE} "
            f"makes it a member again; ScheduleKeyDeletion in {NE} removes it.")
    assert orphan == [{"KeyId": key, "KeyArn": f"arn:aws:kms:{NE}:111122223333:key/{key}",
                       "Region": NE, "KeyState": "Enabled", "PrimaryRegion": EU, "Epoch": 2,
                       "Hint": hint}]
    text = region_cli("conflicts", "--endpoint", cluster.urls[NE])
    assert text.returncode == 0, text.stderr
    assert f"{key}: orphaned in {NE} (Enabled). {hint}\n" in text.stdout
    assert any(c["KeyId"] == key and c["Region"] == AP and c["EventType"] == "ReplicaAdded"
               for c in conflicts_in(cluster, NE)["Conflicts"])
    for region in (US, EU, AP):
        assert conflicts_in(cluster, region)["Orphans"] == []
    eventually(lambda: current(kms[NE], key) == shared,
               "ap-northeast-1 to encrypt under a shared version again")
    assert decrypts(kms[NE], from_ne, b"ne under the loser")
    assert decrypts(kms[NE], before, b"before")
    now = kms[NE].encrypt(KeyId=key, Plaintext=b"ne orphaned")["CiphertextBlob"]
    for region in (US, EU):
        assert decrypts(kms[region], now, b"ne orphaned")

    # The winner adopts it: a member again, it takes the winner's rotation.
    kms[EU].replicate_key(KeyId=key, ReplicaRegion=NE)
    eu_version = current(kms[EU], key)
    eventually(lambda: current(kms[NE], key) == eu_version, "ap-northeast-1 to follow eu-west-1")
    for region in REGIONS:
        eventually(lambda r=region: members(kms[r], key) == set(REGIONS),
                   f"{region} to list ap-northeast-1 again")
    assert conflicts_in(cluster, NE)["Orphans"] == []
    from_eu = kms[EU].encrypt(KeyId=key, Plaintext=b"eu after adoption")["CiphertextBlob"]
    assert decrypts(kms[NE], from_eu, b"eu after adoption")
    assert decrypts(kms[NE], from_ne, b"ne under the loser")
    try:
        kms[EU].decrypt(CiphertextBlob=from_ne)  # the loser's version never reached the winner
        raise AssertionError("eu-west-1 decrypted a fenced version")
    except ClientError as exc:
        assert exc.response["Error"]["Code"] == "InvalidCiphertextException"
