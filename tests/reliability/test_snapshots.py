"""Start-up from projection snapshots (kms.store.snapshot) gives what a full replay gives.

A ``--dev`` node hosting two regions gets a history with every kind of event (keys of each
kind, rotations, imports, deletions, aliases, tags, policies, grants, a multi-Region key with
a replica, a primary-Region update and a promotion). What users read (DescribeKey, ListKeys,
ListAliases, ListGrants, GetKeyLastUsage and the rest, in each region) is the same live, after
a clean restart (the snapshot at shutdown: nothing decoded), after a kill (the snapshot at the
last checkpoint and the rows after it), after every snapshot is removed or damaged (a full
replay, with a ``snapshot_unusable`` line), and after a reset. In process, the projections
restored from a snapshot plus tail equal those a full replay folds. The flatness figure: rows
decoded at start stay bounded by the tail as history grows.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from kms.config import Config
from kms.node import Node
from tests.api.test_import import import_material
from tests.conftest import client_for
from tests.support.expect import eventually
from tests.support.server import ServerProcess

pytestmark = pytest.mark.slow

US, EU = "us-east-1", "eu-west-1"
ROOT = Path(__file__).resolve().parents[2]
LOG_FILE = "events.sqlite3"
# A checkpoint every 25 rows, a snapshot at each: snapshots within a short history.
ENV = {"KMS_CHECKPOINT_ROWS": "25", "KMS_SNAPSHOT_CHECKPOINTS": "1",
       "KMS_START_RECHECK_ROWS": "0", "KMS_CHECKPOINT_SECONDS": "86400"}


PLAINTEXTS = (b"plain-snapshot-7f3a", b"plain-rsa-55d0", b"plain-eu-91c2")


def region_dirs(data_dir: Path) -> dict[str, Path]:
    return {US: data_dir, EU: data_dir / "regions" / EU}


def clients(node: ServerProcess) -> dict[str, Any]:
    return {r: client_for(node.url, region=r) for r in (US, EU)}


def state_in(client: Any, key_id: str) -> str:
    return str(client.describe_key(KeyId=key_id)["KeyMetadata"]["KeyState"])


def region_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "regions.cli", "region", *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)


def history(node: ServerProcess, tag: str) -> dict[str, str]:
    """Every kind of event, in both regions; returns the key ids by role."""
    kms = clients(node)
    us = kms[US]
    ids: dict[str, str] = {}
    sym = ids["sym"] = us.create_key(Description=f"sym {tag}", Tags=[
        {"TagKey": "team", "TagValue": "a"}, {"TagKey": "gone", "TagValue": "b"}])[
        "KeyMetadata"]["KeyId"]
    us.untag_resource(KeyId=sym, TagKeys=["gone"])
    us.tag_resource(KeyId=sym, Tags=[{"TagKey": "team", "TagValue": "b"}])
    us.update_key_description(KeyId=sym, Description=f"sym {tag} (renamed)")
    policy = us.get_key_policy(KeyId=sym, PolicyName="default")["Policy"]
    us.put_key_policy(KeyId=sym, PolicyName="default", Policy=policy.replace(
        '"Version"', '"Id": "snapshot-test", "Version"', 1))
    us.enable_key_rotation(KeyId=sym, RotationPeriodInDays=90)
    us.rotate_key_on_demand(KeyId=sym)
    eventually(lambda: len(us.list_key_rotations(KeyId=sym)["Rotations"]) == 1, "the rotation")
    us.disable_key(KeyId=sym)
    us.enable_key(KeyId=sym)
    blob = us.encrypt(KeyId=sym, Plaintext=PLAINTEXTS[0])["CiphertextBlob"]
    us.decrypt(CiphertextBlob=blob)
    rsa = ids["rsa"] = us.create_key(KeySpec="RSA_2048", KeyUsage="ENCRYPT_DECRYPT")[
        "KeyMetadata"]["KeyId"]
    us.encrypt(KeyId=rsa, Plaintext=PLAINTEXTS[1], EncryptionAlgorithm="RSAES_OAEP_SHA_256")
    ecc = ids["ecc"] = us.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")[
        "KeyMetadata"]["KeyId"]
    us.sign(KeyId=ecc, Message=b"m", SigningAlgorithm="ECDSA_SHA_256")
    hmac = ids["hmac"] = us.create_key(KeySpec="HMAC_256", KeyUsage="GENERATE_VERIFY_MAC")[
        "KeyMetadata"]["KeyId"]
    us.generate_mac(KeyId=hmac, Message=b"m", MacAlgorithm="HMAC_SHA_256")
    ext = ids["external"] = us.create_key(Origin="EXTERNAL")["KeyMetadata"]["KeyId"]
    material = os.urandom(32)
    ids["material"] = material.hex()
    import_material(us, ext, material)
    us.delete_imported_key_material(KeyId=ext)
    import_material(us, ext, material)
    other = ids["other"] = us.create_key()["KeyMetadata"]["KeyId"]
    us.create_alias(AliasName=f"alias/{tag}-a", TargetKeyId=sym)
    us.update_alias(AliasName=f"alias/{tag}-a", TargetKeyId=other)
    us.create_alias(AliasName=f"alias/{tag}-b", TargetKeyId=hmac)
    us.create_alias(AliasName=f"alias/{tag}-c", TargetKeyId=sym)
    us.delete_alias(AliasName=f"alias/{tag}-c")
    root = f"arn:aws:iam::{us.describe_key(KeyId=sym)['KeyMetadata']['AWSAccountId']}:root"
    grants = [us.create_grant(KeyId=sym, GranteePrincipal=root, RetiringPrincipal=root,
                              Operations=["Encrypt", "Decrypt"], Name=f"g{i}",
                              Constraints={"EncryptionContextSubset": {"i": str(i)}})["GrantId"]
              for i in range(3)]
    us.retire_grant(KeyId=sym, GrantId=grants[0])
    us.revoke_grant(KeyId=sym, GrantId=grants[1])
    doomed = us.create_key()["KeyMetadata"]["KeyId"]
    us.create_alias(AliasName=f"alias/{tag}-doomed", TargetKeyId=doomed)
    us.schedule_key_deletion(KeyId=doomed, PendingWindowInDays=7)
    kept = ids["cancelled"] = us.create_key()["KeyMetadata"]["KeyId"]
    us.schedule_key_deletion(KeyId=kept, PendingWindowInDays=7)
    us.cancel_key_deletion(KeyId=kept)
    node.post("/_kms/clock", {"advance_seconds": 8 * 86400})  # the doomed key goes
    eventually(lambda: doomed not in {k["KeyId"] for k in us.list_keys()["Keys"]}, "deleted")
    # Multi-Region: a replica, a rotation reaching it, a primary-Region update, a promotion.
    mrk = ids["mrk"] = us.create_key(MultiRegion=True, Description=f"mrk {tag}")[
        "KeyMetadata"]["KeyId"]
    us.replicate_key(KeyId=mrk, ReplicaRegion=EU, Description="replica")
    eventually(lambda: state_in(kms[EU], mrk) == "Enabled", "the replica")
    us.rotate_key_on_demand(KeyId=mrk)
    eventually(lambda: len(kms[EU].list_key_rotations(KeyId=mrk)["Rotations"]) == 1,
               "the rotation in the replica")
    us.update_primary_region(KeyId=mrk, PrimaryRegion=EU)
    eventually(lambda: all(kms[r].describe_key(KeyId=mrk)["KeyMetadata"][
        "MultiRegionConfiguration"]["PrimaryKey"]["Region"] == EU
        and state_in(kms[r], mrk) == "Enabled" for r in (US, EU)), "the update")
    promoted = ids["promoted"] = us.create_key(MultiRegion=True)["KeyMetadata"]["KeyId"]
    us.replicate_key(KeyId=promoted, ReplicaRegion=EU)
    eventually(lambda: state_in(kms[EU], promoted) == "Enabled", "the second replica")
    out = region_cli("promote", "--endpoint", node.url, "--region", EU, promoted)
    assert out.returncode == 0, out.stderr
    eventually(lambda: all(kms[r].describe_key(KeyId=promoted)["KeyMetadata"][
        "MultiRegionConfiguration"]["PrimaryKey"]["Region"] == EU for r in (US, EU)),
        "the promotion seen in both regions")
    kms[EU].encrypt(KeyId=mrk, Plaintext=PLAINTEXTS[2])
    return ids


def pages(call: Any, key: str, **params: Any) -> list[Any]:
    out: list[Any] = []
    while True:
        page = call(**params)
        out += page[key]
        if not page.get("Truncated"):
            return out
        params["Marker"] = page["NextMarker"]


def answers(node: ServerProcess) -> dict[str, Any]:
    """What a user reads of every key and alias, in each region."""
    seen: dict[str, Any] = {}
    for region, kms in clients(node).items():
        keys = pages(kms.list_keys, "Keys")
        seen[f"{region} ListKeys"] = keys
        seen[f"{region} ListAliases"] = pages(kms.list_aliases, "Aliases")
        for k in keys:
            kid = k["KeyId"]
            seen[f"{region} {kid}"] = {
                "DescribeKey": read(kms.describe_key, KeyId=kid),
                "Tags": read(pages, kms.list_resource_tags, "Tags", KeyId=kid),
                "Policy": read(kms.get_key_policy, KeyId=kid),
                "Grants": read(pages, kms.list_grants, "Grants", KeyId=kid),
                "LastUsage": read(kms.get_key_last_usage, KeyId=kid),
                "RotationStatus": read(kms.get_key_rotation_status, KeyId=kid),
                "Rotations": read(pages, kms.list_key_rotations, "Rotations", KeyId=kid),
            }
    return seen


def read(call: Any, *args: Any, **params: Any) -> Any:
    """A read's answer (without its request metadata), or the error it gets."""
    try:
        answer = call(*args, **params)
    except ClientError as exc:
        return exc.response["Error"]
    if isinstance(answer, dict):
        answer.pop("ResponseMetadata", None)
    return answer


def verified(node: ServerProcess) -> dict[str, dict[str, Any]]:
    """The ``log_verified`` line of each region's start-up, by region."""
    out = {line["region"]: line for line in node.log_lines() if line["event"] == "log_verified"}
    assert set(out) == {US, EU}
    return out


def start(data_dir: Path, log_path: Path) -> ServerProcess:
    """A ``--dev`` node; both regions' logs open before it serves once the EU one exists."""
    node = ServerProcess(data_dir, region=US, log_path=log_path, env=ENV).start()
    if (data_dir / "regions" / EU).exists():
        assert {ln["region"] for ln in node.log_lines() if ln["event"] == "log_verified"} == {
            US, EU}
    return node


def snapshot_rows(db: Path) -> list[tuple[int, int]]:
    with closing(sqlite3.connect(db)) as conn:
        return conn.execute("SELECT seq, length(body) FROM snapshots ORDER BY seq").fetchall()


def test_start_from_snapshot_and_tail_answers_as_a_full_replay(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    node = start(data_dir, tmp_path / "0.log")
    try:
        ids = history(node, "one")
        live = answers(node)
    finally:
        node.stop()
    for db in region_dirs(data_dir).values():
        assert snapshot_rows(db / LOG_FILE), f"no snapshot stored in {db}"
        with closing(sqlite3.connect(db / LOG_FILE)) as conn:
            bodies = b"".join(bytes(b) for (b,) in conn.execute("SELECT body FROM snapshots"))
        for secret in (*PLAINTEXTS, bytes.fromhex(ids["material"])):
            assert secret not in bodies

    # A clean restart: the shutdown snapshot holds everything; no row is decoded.
    node = start(data_dir, tmp_path / "1.log")
    try:
        lines = verified(node)
        print("\n  clean restart: " + "; ".join(
            f"rows decoded {v['rows_decoded']} of {v['rows']} (snapshot at {v['snapshot_seq']})"
            for v in lines.values()))
        assert all(v["rows_decoded"] == 0 and v["snapshot_seq"] == v["rows"] > 0
                   for v in lines.values())
        assert answers(node) == live
        tail_ids = history(node, "two")  # the tail after the last snapshot
        clients(node)[US].tag_resource(KeyId=tail_ids["sym"],
                                       Tags=[{"TagKey": "after", "TagValue": "kill"}])
        live = answers(node)
    finally:
        node.kill()  # no shutdown snapshot

    node = start(data_dir, tmp_path / "2.log")
    try:
        lines = verified(node)
        print("  after a kill: " + "; ".join(
            f"rows decoded {v['rows_decoded']} of {v['rows']} (snapshot at {v['snapshot_seq']})"
            for v in lines.values()))
        assert all(0 < v["snapshot_seq"] < v["rows"] and
                   v["rows_decoded"] == v["rows"] - v["snapshot_seq"] for v in lines.values())
        assert answers(node) == live
        live = answers(node)  # these reads are audit facts too; a stop snapshots them
    finally:
        node.stop()

    # Without any snapshot, and with damaged ones: every row replayed, the same answers.
    for name, change in (("none", "DELETE FROM snapshots"),
                         ("damaged", "UPDATE snapshots SET body = body || x'00'")):
        copy = tmp_path / name
        shutil.copytree(data_dir, copy)
        for db in region_dirs(copy).values():
            with closing(sqlite3.connect(db / LOG_FILE)) as conn, conn:
                conn.execute(change)
        node = start(copy, tmp_path / f"{name}.log")
        try:
            lines = verified(node)
            assert all(v["snapshot_seq"] == 0 and v["rows_decoded"] == v["rows"]
                       for v in lines.values())
            unusable = [ln for ln in node.log_lines() if ln["event"] == "snapshot_unusable"]
            if name == "damaged":
                assert unusable and all(ln["reason"] == "its body does not match its digest"
                                        for ln in unusable)
            else:
                assert not unusable
            assert answers(node) == live
        finally:
            node.stop()

    # In process: the projections restored from a snapshot alone, from the one before it and
    # the rows after it, and by a full replay are the same.
    folded: dict[str, list[dict[str, Any]]] = {US: [], EU: []}
    for name, change in (("latest", ""),
                         ("older", "DELETE FROM snapshots WHERE seq = (SELECT max(seq) FROM "
                                   "snapshots)"),
                         ("replay", "DELETE FROM snapshots")):
        copy = tmp_path / f"in-process-{name}"
        shutil.copytree(data_dir, copy)
        for region, db in region_dirs(copy).items():
            if change:
                with closing(sqlite3.connect(db / LOG_FILE)) as conn, conn:
                    conn.execute(change)
            folded[region].append(asyncio.run(projections(db, region)))
    for region, (latest, older, replay) in folded.items():
        print(f"  in process, {region}: rows decoded from the latest snapshot "
              f"{latest.pop('decoded')}, from the one before {older.pop('decoded')}, "
              f"replaying all {replay.pop('decoded')}")
        assert latest == older == replay

    # After a reset, nothing of the old history comes back from a snapshot.
    node = start(data_dir, tmp_path / "3.log")
    try:
        node.reset()
        history(node, "three")
        live = answers(node)
    finally:
        node.stop()
    node = start(data_dir, tmp_path / "4.log")
    try:
        assert all(v["rows_decoded"] == 0 for v in verified(node).values())
        assert answers(node) == live
    finally:
        node.stop()


async def projections(path: Path, region: str) -> dict[str, Any]:
    """Every projection's folded state (and the log's heads) once the log is opened."""
    node = Node(Config(data_dir=path, region=region, dev=True))
    await node.log.open()
    try:
        svc = node.service
        s, g, u, lg = svc.state, svc.grants, svc.usage, node.log
        return {
            "keys": s.keys, "key order": [k for _, k in s.keys_in_order()],
            "aliases": s.aliases, "mrks": s.mrks, "held": s._held, "history": s._history,
            "conflicts": s.conflicts_recorded, "grants": g.by_key, "grantees": g._by_grantee,
            "retiring": g._by_retiring, "grant order": g._order, "named": g._named,
            "last use": u.last, "tracking": u.tracking_since_ms, "heads": lg._heads,
            "cursors": lg._cursors, "seq": lg.last_seq, "hash": lg._last_hash,
            "vault": dict(lg.vault), "decoded": lg.start_decoded,
        }
    finally:
        await node.log.close()


# -- flatness ----------------------------------------------------------------------------------
FLAT_ENV = {"KMS_CHECKPOINT_ROWS": "500", "KMS_SNAPSHOT_CHECKPOINTS": "1",
            "KMS_START_RECHECK_ROWS": "0", "KMS_CHECKPOINT_SECONDS": "86400"}


def grow(url: str, rows: int) -> None:
    """About ``rows`` rows of history: Encrypt calls (one audit fact each), four at a time."""
    kms: Any = client_for(url)
    key = kms.create_key()["KeyMetadata"]["KeyId"]

    def call(i: int) -> None:
        kms.encrypt(KeyId=key, Plaintext=b"flat", EncryptionContext={"i": str(i)})

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(call, range(rows)))


def test_rows_decoded_at_start_stay_bounded_as_history_grows(tmp_path: Path) -> None:
    figures = []
    for size in (1_500, 6_000):
        data_dir = tmp_path / f"data-{size}"
        node = ServerProcess(data_dir, env=FLAT_ENV).start()
        try:
            grow(node.url, size)
        finally:
            node.kill()  # the rows after the last snapshot are the tail
        node = ServerProcess(data_dir, log_path=tmp_path / f"{size}.log", env=FLAT_ENV).start()
        node.stop()
        line = next(ln for ln in node.log_lines() if ln["event"] == "log_verified")
        print(f"\n  start-up rows decoded: {line['rows_decoded']} of {line['rows']} "
              f"(rows read {line['rows_read']}, snapshot at seq {line['snapshot_seq']})")
        figures.append(line)
    for line in figures:
        assert line["rows_decoded"] == line["rows"] - line["snapshot_seq"]
        # The rows after the last snapshot: fewer than two checkpoints' worth (a kill may come
        # between a checkpoint's commit and its snapshot), whatever the history's length.
        assert line["rows_decoded"] < 2 * 500 + 16
        assert line["rows_read"] <= line["rows_decoded"] + 2  # and the rows that anchor it
    assert figures[1]["rows"] > 3 * figures[0]["rows"]


# -- settings ----------------------------------------------------------------------------------
def test_checkpoint_settings_are_node_keys_and_the_environment_overrides_them(
        tmp_path: Path) -> None:
    config = tmp_path / "kms.toml"
    config.write_text("[node]\ncheckpoint_rows = 10\ncheckpoint_seconds = 86400\n"
                      "start_recheck_rows = 0\nsnapshot_checkpoints = 1\n")
    data_dir = tmp_path / "data"
    node = ServerProcess(data_dir, extra=["--config", str(config)],
                         log_path=tmp_path / "1.log").start()
    try:
        grow(node.url, 60)
    finally:
        node.stop()  # drains the writer: every checkpoint's snapshot is written
    with closing(sqlite3.connect(data_dir / LOG_FILE)) as conn:
        cps = [seq for (seq,) in conn.execute("SELECT seq FROM checkpoints ORDER BY seq")]
    assert len(cps) >= 3 and all(b - a <= 10 + 4 for a, b in zip([0, *cps], cps, strict=False))
    assert [s for s, _ in snapshot_rows(data_dir / LOG_FILE)] == cps[-2:]  # the newest two

    # KMS_START_RECHECK_ROWS still wins over the file: every row before the snapshot re-hashed
    node = ServerProcess(data_dir, extra=["--config", str(config)], log_path=tmp_path / "2.log",
                         env={"KMS_START_RECHECK_ROWS": "100000"}).start()
    node.stop()
    line = next(ln for ln in node.log_lines() if ln["event"] == "log_verified")
    assert line["rows_rehashed"] == line["rows_read"] == line["rows"]
    assert line["rows_decoded"] == line["rows"] - line["snapshot_seq"]

    for bad, message in (('checkpoint_rows = "10"', "[node] checkpoint_rows must be a int, "
                                                    "not str ('10')"),
                         ("checkpoint_rows = 0", "checkpoint_rows must be at least 1, not 0"),
                         ("snapshot_checkpoints = -1",
                          "snapshot_checkpoints must be at least 0, not -1")):
        config.write_text(f"[node]\n{bad}\n")
        with pytest.raises(ValueError) as info:
            Config.load(config, {})
        assert str(info.value).endswith(message)
        out = subprocess.run([*ServerProcess(tmp_path / "never").command(), "--config",
                              str(config)], capture_output=True, text=True, cwd=ROOT,
                             timeout=60)
        assert out.returncode != 0 and message in out.stderr
        assert not (tmp_path / "never").exists()
