"""Regions converge after a partition: three region processes (compose.yaml's, on loopback)
with every peer link through a TCP fault proxy (ops/faultproxy.py). Multi-region keys of three
kinds are replicated to both other regions; then, through a partition, a delay on every
link, one-way links and the isolation of one replica, the primary keeps acknowledging shared
changes (on-demand rotations, rotation-setting changes, new keys replicated) and making
ciphertexts. After heal every region must show the same shared properties, every change the
primary acknowledged (in each replica's log, by its cursor, and in what its API shows), and
decrypt every ciphertext. Prints the RELIABILITY.md figure line."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ops.cluster import Cluster
from tests.conftest import client_for
from tests.support.expect import eventually

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose.yaml"
US, EU, AP = "us-east-1", "eu-west-1", "ap-southeast-2"
REPLICAS = (EU, AP)
OAEP = "RSAES_OAEP_SHA_256"
CONVERGE_S = 45.0


@dataclass
class Ledger:
    """What the primary acknowledged: keys and their member regions, rotations (by key
    material id), the last rotation setting per key, and ciphertexts to decrypt."""

    members: dict[str, set[str]] = field(default_factory=dict)  # key -> regions
    rotations: dict[str, list[str]] = field(default_factory=dict)  # key -> material ids
    setting: dict[str, tuple[bool, int | None]] = field(default_factory=dict)
    blobs: list[tuple[str, bytes, bytes, str | None]] = field(default_factory=list)
    macs: list[tuple[str, bytes, bytes]] = field(default_factory=list)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    started = Cluster.up(COMPOSE, tmp_path_factory.mktemp("partition"), proxied=True)
    try:
        yield started
    finally:
        started.down(quiet=True)


def get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=30) as r:
        doc: dict[str, Any] = json.load(r)
    return doc


def material_ids(client: Any, key: str) -> list[str]:
    pages = client.get_paginator("list_key_rotations").paginate(KeyId=key)
    return [str(r.get("KeyMaterialId") or r["RotationDate"]) for p in pages for r in p["Rotations"]]


def shared_view(client: Any, key: str) -> dict[str, Any]:
    """The properties a replica shares with its primary, as DescribeKey and the rotation
    calls show them in one region."""
    md = client.describe_key(KeyId=key)["KeyMetadata"]
    mrc = md.get("MultiRegionConfiguration", {})
    view: dict[str, Any] = {
        p: md.get(p) for p in ("KeySpec", "KeyUsage", "Origin", "EncryptionAlgorithms",
                               "SigningAlgorithms", "MacAlgorithms", "MultiRegion")}
    view["PrimaryKey"] = mrc.get("PrimaryKey")
    view["ReplicaKeys"] = sorted(mrc.get("ReplicaKeys", []), key=lambda r: r["Region"])
    view["KeyState"] = md["KeyState"] == "Enabled"  # all enabled here: Creating is not done
    if md["KeySpec"] == "SYMMETRIC_DEFAULT":
        st = client.get_key_rotation_status(KeyId=key)
        view["KeyRotationEnabled"] = st["KeyRotationEnabled"]
        view["RotationPeriodInDays"] = st.get("RotationPeriodInDays")
        view["NextRotationDate"] = st.get("NextRotationDate")
        view["Rotations"] = material_ids(client, key)
    return view


def divergences(kms: dict[str, Any], ledger: Ledger) -> tuple[int, int]:
    """(keys whose every member shows the primary's shared view, divergent properties)."""
    same, divergent = 0, 0
    for key, regions in ledger.members.items():
        want = shared_view(kms[US], key)
        bad = 0
        for region in regions - {US}:
            try:
                got = shared_view(kms[region], key)
            except Exception:  # not there at all: every property diverges
                got = {}
            bad += sum(1 for p in want if got.get(p) != want[p])
        same += bad == 0
        divergent += bad
    return same, divergent


def missing_on_replicas(cluster: Cluster, kms: dict[str, Any], ledger: Ledger,
                        acked_seq: int) -> int:
    """Acknowledged shared changes a replica lacks: rows of the primary's shared streams up
    to ``acked_seq`` beyond the replica's durable cursor, plus changes acknowledged to the
    client (a rotation, the last rotation setting, a replica) its API does not show."""
    feed = get_json(f"{cluster.urls[US]}/_kms/replication?origin={US}&after=0&limit=1000")
    acked = [r["origin_seq"] for r in feed["rows"] if r["origin_seq"] <= acked_seq]
    missing = 0
    for region in REPLICAS:
        cursor = int(cluster.health()[region]["peers"][US]["cursor"])  # type: ignore[index]
        missing += sum(1 for seq in acked if seq > cursor)
    for key, regions in ledger.members.items():
        for region in regions - {US}:
            try:
                md = kms[region].describe_key(KeyId=key)["KeyMetadata"]
                seen = set(material_ids(kms[region], key)) if key in ledger.rotations else set()
                st = (kms[region].get_key_rotation_status(KeyId=key)
                      if key in ledger.setting else {})
            except Exception:
                missing += 1 + len(ledger.rotations.get(key, [])) + (key in ledger.setting)
                continue
            missing += md["MultiRegionConfiguration"]["MultiRegionKeyType"] != "REPLICA"
            missing += sum(1 for m in ledger.rotations.get(key, []) if m not in seen)
            if key in ledger.setting:
                enabled, period = ledger.setting[key]
                missing += (st["KeyRotationEnabled"], st.get("RotationPeriodInDays")
                            if enabled else None) != (enabled, period)
    return missing


def converged(kms: dict[str, Any], ledger: Ledger) -> bool:
    same, divergent = divergences(kms, ledger)
    return same == len(ledger.members) and divergent == 0


def settle(check: Callable[[], Any], deadline_s: float) -> bool:
    try:
        eventually(check, "convergence", deadline_s)
        return True
    except AssertionError:
        return False


def test_regions_converge_after_partition_delay_one_way_and_isolation(
        cluster: Cluster) -> None:
    kms: dict[str, Any] = {r: client_for(url, region=r) for r, url in cluster.urls.items()}
    ledger = Ledger()
    n = iter(range(10_000))

    def replicate(key: str, regions: tuple[str, ...] = REPLICAS) -> None:
        for region in regions:
            out = kms[US].replicate_key(KeyId=key, ReplicaRegion=region)
            assert out["ReplicaKeyMetadata"]["KeyState"] == "Creating"
            ledger.members[key].add(region)

    def create(**params: Any) -> str:
        key = str(kms[US].create_key(MultiRegion=True, **params)["KeyMetadata"]["KeyId"])
        ledger.members[key] = {US}
        return key

    def rotate(key: str) -> str:
        before = set(material_ids(kms[US], key))
        kms[US].rotate_key_on_demand(KeyId=key)
        new = [m for m in material_ids(kms[US], key) if m not in before]
        assert len(new) == 1
        ledger.rotations.setdefault(key, []).append(new[0])
        return new[0]

    def set_rotation(key: str, period: int | None) -> None:
        if period is None:
            kms[US].disable_key_rotation(KeyId=key)
        else:
            kms[US].enable_key_rotation(KeyId=key, RotationPeriodInDays=period)
        ledger.setting[key] = (period is not None, period)

    def encrypt(key: str, algorithm: str | None = None) -> None:
        plaintext = f"acknowledged {next(n)}".encode()
        extra = {"EncryptionAlgorithm": algorithm} if algorithm else {}
        blob = kms[US].encrypt(KeyId=key, Plaintext=plaintext, **extra)["CiphertextBlob"]
        ledger.blobs.append((key, blob, plaintext, algorithm))

    def mac(key: str) -> None:
        message = f"message {next(n)}".encode()
        tag = kms[US].generate_mac(KeyId=key, Message=message,
                                   MacAlgorithm="HMAC_SHA_256")["Mac"]
        ledger.macs.append((key, message, tag))

    sym = create(Description="symmetric")
    hmac = create(KeySpec="HMAC_256", KeyUsage="GENERATE_VERIFY_MAC")
    rsa = create(KeySpec="RSA_2048", KeyUsage="ENCRYPT_DECRYPT")
    for key in (sym, hmac, rsa):
        replicate(key)
    assert settle(lambda: converged(kms, ledger), CONVERGE_S), "initial replication"

    def delay_everywhere() -> None:
        for a, b in ((US, EU), (US, AP), (EU, AP)):
            cluster.delay(a, b, 150)

    def one_way() -> None:  # eu-west-1 cannot reach us-east-1, nor us-east-1 ap-southeast-2
        cluster.one_way(US, EU)
        cluster.one_way(AP, US)

    periods = iter([180, None, 90, 400])
    phases: list[tuple[str, Callable[[], None], str | None]] = [  # (fault, region cut off)
        ("partition us-east-1 | eu-west-1", lambda: cluster.partition(US, EU), EU),
        ("every link delayed 150 ms a chunk", delay_everywhere, None),
        ("one-way links", one_way, EU),
        ("ap-southeast-2 isolated", lambda: cluster.isolate(AP), AP),
    ]
    for name, fault, cut_off in phases:
        cluster.heal()
        fault()
        material = rotate(sym)
        set_rotation(sym, next(periods))
        for _ in range(2):
            encrypt(sym)
        encrypt(rsa, OAEP)
        mac(hmac)
        fresh = create(Description="made during a fault")
        encrypt(fresh)
        replicate(fresh)
        # the fault bites: the regions still reached see the rotation, the cut-off one not
        reached = [r for r in REPLICAS if r != cut_off]
        eventually(lambda m=material, rs=reached: all(m in material_ids(kms[r], sym)
                                                      for r in rs),
                   f"the rotation in {reached} ({name})", CONVERGE_S)
        if cut_off is not None:
            assert material not in material_ids(kms[cut_off], sym)

    acked_seq = int(cluster.health()[US]["log_seq"])  # type: ignore[call-overload]
    cluster.heal()
    settle(lambda: converged(kms, ledger), CONVERGE_S)

    same, divergent = divergences(kms, ledger)
    missing = missing_on_replicas(cluster, kms, ledger, acked_seq)
    decrypted, total = 0, 0
    for key, blob, plaintext, algorithm in ledger.blobs:
        for region in sorted(ledger.members[key] - {US}):
            total += 1
            extra = {"KeyId": key, "EncryptionAlgorithm": algorithm} if algorithm else {}
            try:
                got = kms[region].decrypt(CiphertextBlob=blob, **extra)["Plaintext"]
            except Exception:
                continue
            decrypted += got == plaintext
    verified = sum(kms[r].verify_mac(KeyId=key, Message=m, Mac=tag,
                                     MacAlgorithm="HMAC_SHA_256")["MacValid"]
                   for key, m, tag in ledger.macs for r in REPLICAS)
    print(f"\nconverged {same}/{len(ledger.members)}; divergent shared properties {divergent}; "
          f"acknowledged events missing on replicas {missing}; "
          f"cross-region Decrypt {decrypted}/{total}")
    assert (same, divergent, missing, decrypted) == (len(ledger.members), 0, 0, total)
    assert len(ledger.members) == 3 + len(phases) and total == 2 * 4 * len(phases)
    assert verified == len(ledger.macs) * len(REPLICAS)
