"""Failover drill: lose the primary region, keep the data usable, promote, and take it back.

Rules: starts compose.yaml's cluster as local processes (ops/cluster.py) with its peer links
through fault proxies, drives it only as a user and an operator would (boto3, ``kms region
promote|conflicts``, ``/_kms/health``), waits on conditions with deadlines (never fixed
sleeps), prints one figure line on stdout (steps go to stderr), exits 1 when any figure is
wrong, and stops every process it started, also on failure.

    python ops/drill.py failover [--compose compose.yaml] [--state DIR] [--keep]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: the repository root is the import root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import boto3  # noqa: E402
from botocore.config import Config  # noqa: E402
from botocore.exceptions import BotoCoreError, ClientError  # noqa: E402

from ops.cluster import Cluster, ClusterError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEADLINE_S = 60.0
CIPHERTEXTS = 5
SIGN_ALG, MAC_ALG = "RSASSA_PSS_SHA_256", "HMAC_SHA_256"


class DrillFailed(Exception):
    """A step of the drill did not happen; the message says which."""


def step(text: str) -> None:
    print(f"drill: {text}", file=sys.stderr, flush=True)


def client(url: str, region: str) -> Any:
    return boto3.client("kms", endpoint_url=url, region_name=region,
                        aws_access_key_id="AKIDDRILL", aws_secret_access_key="drill",
                        config=Config(retries={"max_attempts": 1}, connect_timeout=5,
                                      read_timeout=30))


def until(check: Callable[[], Any], what: str, deadline_s: float = DEADLINE_S) -> Any:
    """Poll ``check`` until it is truthy (an AWS error counts as not yet)."""
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            got = check()
        except (ClientError, BotoCoreError):
            got = None
        if got:
            return got
        if time.monotonic() > deadline:
            raise DrillFailed(f"timed out after {deadline_s:.0f} s waiting for {what}")
        time.sleep(0.05)


def get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=30) as r:
        doc: dict[str, Any] = json.load(r)
    return doc


def region_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """``kms region ...`` as an operator runs it (the console script's module)."""
    return subprocess.run([sys.executable, "-m", "regions.cli", "region", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


@dataclass
class Figures:
    writes_unavailable_s: float | None = None
    dual_primary_writes: int = 0
    silently_lost: int = 0
    decrypted: int = 0
    ciphertexts: int = 0
    conflicts: int = 0
    stranded: int = 0  # old-primary shared events past the promotion's basis
    problems: list[str] = field(default_factory=list)

    def line(self) -> str:
        x = "-" if self.writes_unavailable_s is None else f"{self.writes_unavailable_s:.1f}"
        return (f"writes unavailable {x} s; dual-primary writes {self.dual_primary_writes}; "
                f"old-primary events silently lost {self.silently_lost}; "
                f"old ciphertexts decrypted {self.decrypted}/{self.ciphertexts}; "
                f"conflicts reported {self.conflicts}")

    def wrong(self) -> list[str]:
        why = list(self.problems)
        if self.writes_unavailable_s is None:
            why.append("writes never resumed")
        if self.dual_primary_writes:
            why.append("the old primary acknowledged writes after the promotion")
        if self.silently_lost:
            why.append("old-primary events neither replicated nor reported")
        if self.decrypted != self.ciphertexts or not self.ciphertexts:
            why.append("old ciphertexts that did not decrypt")
        if self.conflicts != self.stranded or not self.stranded:
            why.append(f"{self.conflicts} conflicts reported for {self.stranded} stranded "
                       f"events")
        return why


def failover(compose: Path, state_dir: Path, figures: Figures) -> None:
    """The drill, filling ``figures`` as it goes, on a cluster it starts and always stops."""
    cluster = Cluster.up(compose, state_dir, proxied=True)
    try:
        _failover(cluster, compose.parent, figures)
    finally:
        cluster.down(quiet=True)


def _failover(cluster: Cluster, project: Path, f: Figures) -> None:
    regions = list(cluster.urls)
    old, new, other = regions[0], regions[1], regions[2]
    kms = {r: client(url, r) for r, url in cluster.urls.items()}
    step(f"cluster up: {', '.join(f'{r} {u}' for r, u in cluster.urls.items())}")

    # -- keys of each kind in the primary region, replicated to both others ------------
    keys = {
        "symmetric": kms[old].create_key(MultiRegion=True)["KeyMetadata"]["KeyId"],
        "rsa-sign": kms[old].create_key(MultiRegion=True, KeySpec="RSA_2048",
                                        KeyUsage="SIGN_VERIFY")["KeyMetadata"]["KeyId"],
        "hmac": kms[old].create_key(MultiRegion=True, KeySpec="HMAC_256",
                                    KeyUsage="GENERATE_VERIFY_MAC")["KeyMetadata"]["KeyId"],
    }
    for key in keys.values():
        for region in (new, other):
            kms[old].replicate_key(KeyId=key, ReplicaRegion=region)
    for key in keys.values():
        for region in (new, other):
            until(partial(_enabled, kms[region], key), f"the replica of {key} in {region}")
    sym, rsa, hmac = keys["symmetric"], keys["rsa-sign"], keys["hmac"]
    step(f"keys {', '.join(keys.values())} replicated to {new} and {other}")

    # -- data made in the primary -------------------------------------------------------
    blobs = []
    for i in range(CIPHERTEXTS):
        plaintext = f"made in {old} #{i}".encode()
        blobs.append((kms[old].encrypt(KeyId=sym, Plaintext=plaintext,
                                       EncryptionContext={"drill": str(i)})["CiphertextBlob"],
                      plaintext, str(i)))
    message = b"signed in the primary"
    signature = kms[old].sign(KeyId=rsa, Message=message, MessageType="RAW",
                              SigningAlgorithm=SIGN_ALG)["Signature"]
    tag = kms[old].generate_mac(KeyId=hmac, Message=message, MacAlgorithm=MAC_ALG)["Mac"]
    # the last writes before the loss never leave the primary: its peers cannot reach it
    last_shared = _shared_seqs(cluster, old, 0)[-1]
    for region in (new, other):
        until(partial(_caught_up, cluster, region, old, last_shared),
              f"{region} to catch up with {old}")
    cluster.isolate(old)
    kms[old].rotate_key_on_demand(KeyId=sym)
    kms[old].enable_key_rotation(KeyId=sym, RotationPeriodInDays=200)
    old_seq = _log_seq(cluster, old)

    # -- the primary region is lost ------------------------------------------------------
    if cluster.kill(old) != "killed":
        raise DrillFailed(f"{old} did not die on SIGKILL")
    killed_at = time.monotonic()
    cluster.reset_links(old)  # what it had in flight is lost with it
    cluster.heal()  # the links come back; the region does not
    step(f"{old} killed (SIGKILL) after two writes its peers never saw")
    for blob, plaintext, n in blobs:
        for region in (new, other):
            f.ciphertexts += 1
            got = kms[region].decrypt(CiphertextBlob=blob, EncryptionContext={"drill": n})
            f.decrypted += got["Plaintext"] == plaintext
    for region in (new, other):
        if not kms[region].verify(KeyId=rsa, Message=message, Signature=signature,
                                  MessageType="RAW", SigningAlgorithm=SIGN_ALG)["SignatureValid"]:
            f.problems.append(f"the primary's signature did not verify in {region}")
        if not kms[region].verify_mac(KeyId=hmac, Message=message, Mac=tag,
                                      MacAlgorithm=MAC_ALG)["MacValid"]:
            f.problems.append(f"the primary's MAC did not verify in {region}")
    replica_sig = kms[new].sign(KeyId=rsa, Message=b"signed in a replica", MessageType="RAW",
                                SigningAlgorithm=SIGN_ALG)["Signature"]
    if not kms[other].verify(KeyId=rsa, Message=b"signed in a replica", Signature=replica_sig,
                             MessageType="RAW", SigningAlgorithm=SIGN_ALG)["SignatureValid"]:
        f.problems.append(f"a signature made in {new} did not verify in {other}")
    step(f"replicas serve crypto: {f.decrypted}/{f.ciphertexts} decrypted, verify, sign")

    # -- the operator promotes a replica --------------------------------------------------
    basis = _cursor(cluster, new, old)
    for key in keys.values():
        done = region_cli("promote", "--endpoint", cluster.urls[new], key)
        if done.returncode != 0:
            raise DrillFailed(f"kms region promote {key} at {new}: {done.stderr.strip()}")
    kms[new].rotate_key_on_demand(KeyId=sym)
    f.writes_unavailable_s = time.monotonic() - killed_at
    rotations = _rotations(kms[new], sym)
    step(f"promoted in {new}; a rotation there acknowledged "
         f"{f.writes_unavailable_s:.1f} s after the loss")
    until(lambda: _rotations(kms[other], sym) == rotations,
          f"the new primary's rotation in {other}")

    # -- the old primary returns ----------------------------------------------------------
    cluster.start(old, project)
    def demoted(key: str) -> bool:
        return _config(kms[old], key) == _config(kms[other], key) == ("REPLICA", new)

    for key in keys.values():
        until(partial(demoted, key), f"{old} to demote itself for {key}")
    # A rotation the old primary made while cut off was fenced: it is reported (below),
    # never listed as the key's, so every member lists the new primary's rotations.
    until(lambda: _rotations(kms[old], sym) == rotations,
          f"{old} to list the new primary's rotations (and not its fenced one)")
    step(f"{old} is back and shows {new} as primary")
    for blob, plaintext, n in blobs:
        f.ciphertexts += 1
        got = kms[old].decrypt(CiphertextBlob=blob, EncryptionContext={"drill": n})
        f.decrypted += got["Plaintext"] == plaintext
    for attempt in (lambda: kms[old].rotate_key_on_demand(KeyId=sym),
                    lambda: kms[old].enable_key_rotation(KeyId=sym, RotationPeriodInDays=90)):
        try:
            attempt()
            f.dual_primary_writes += 1
        except ClientError:
            pass
    primaries = {r: sum(_config(kms[r], k)[0] == "PRIMARY" for k in keys.values())
                 for r in regions}
    if primaries != {old: 0, new: len(keys), other: 0}:
        f.problems.append(f"primaries per region: {primaries}")
    for key in keys.values():  # shared properties follow the new primary everywhere
        want = _shared(kms[new], key)
        for region in (old, other):
            got = _shared(kms[region], key)
            for name in (p for p in want if got.get(p) != want[p]):
                f.problems.append(f"{key} in {region}: {name} {got.get(name)!r}, "
                                  f"{new} shows {want[name]!r}")

    # -- what the old primary wrote that never reached the new one -------------------------
    stranded = {seq for seq in _shared_seqs(cluster, old, basis) if seq <= old_seq}
    f.stranded = len(stranded)

    def reported() -> set[int]:
        seen: set[int] = set()
        for region in regions:
            out = region_cli("conflicts", "--endpoint", cluster.urls[region], "--json")
            if out.returncode != 0:
                raise DrillFailed(f"kms region conflicts at {region}: {out.stderr.strip()}")
            seen |= {int(c["OriginSeq"]) for c in json.loads(out.stdout)["Conflicts"]
                     if c["Region"] == old}
        return seen

    # a conflict is folded where the old primary's rows arrive: wait until they have
    until(lambda: all(_caught_up(cluster, r, old, old_seq) for r in (new, other)),
          f"{new} and {other} to read {old}'s log to its end")
    conflicts = reported()
    f.conflicts = len(conflicts)
    f.silently_lost = len(stranded - conflicts)
    step(f"{f.stranded} events of {old} past the promotion's basis (seq {basis}); "
         f"conflicts reported {f.conflicts}")


def _log_seq(cluster: Cluster, region: str) -> int:
    return int(cluster.health()[region]["log_seq"])  # type: ignore[call-overload]


def _cursor(cluster: Cluster, region: str, of: str) -> int:
    peers: Any = cluster.health()[region].get("peers") or {}
    return int(peers.get(of, {}).get("cursor", -1))


def _shared_seqs(cluster: Cluster, region: str, after: int) -> list[int]:
    """The seqs of ``region``'s shared rows after ``after``, as its peers read them."""
    feed = get_json(f"{cluster.urls[region]}/_kms/replication?origin={region}&after={after}"
                    f"&limit=1000")
    return [int(r["origin_seq"]) for r in feed["rows"]]


def _caught_up(cluster: Cluster, region: str, of: str, seq: int) -> bool:
    return _cursor(cluster, region, of) >= seq


def _enabled(kms: Any, key: str) -> bool:
    return bool(kms.describe_key(KeyId=key)["KeyMetadata"]["KeyState"] == "Enabled")


def _rotations(kms: Any, key: str) -> list[str]:
    return [str(r.get("KeyMaterialId") or r["RotationDate"])
            for p in kms.get_paginator("list_key_rotations").paginate(KeyId=key)
            for r in p["Rotations"]]


def _shared(kms: Any, key: str) -> dict[str, Any]:
    """What a member shares with its primary."""
    md = kms.describe_key(KeyId=key)["KeyMetadata"]
    mrc = md["MultiRegionConfiguration"]
    view = {p: md.get(p) for p in ("KeySpec", "KeyUsage", "Origin", "EncryptionAlgorithms",
                                   "SigningAlgorithms", "MacAlgorithms")}
    view["PrimaryKey"] = mrc["PrimaryKey"]
    view["ReplicaKeys"] = sorted(mrc["ReplicaKeys"], key=lambda r: str(r["Region"]))
    if md["KeySpec"] == "SYMMETRIC_DEFAULT":
        st = kms.get_key_rotation_status(KeyId=key)
        view["rotation"] = (st["KeyRotationEnabled"], st.get("RotationPeriodInDays"),
                            st.get("NextRotationDate"))
        view["rotations"] = _rotations(kms, key)
    return view


def _config(kms: Any, key: str) -> tuple[str, str]:
    mrc = kms.describe_key(KeyId=key)["KeyMetadata"]["MultiRegionConfiguration"]
    return str(mrc["MultiRegionKeyType"]), str(mrc["PrimaryKey"]["Region"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="drill.py", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="drill", required=True)
    fo = sub.add_parser("failover", help="lose the primary, promote a replica, take it back")
    fo.add_argument("--compose", type=Path, default=ROOT / "compose.yaml")
    fo.add_argument("--state", type=Path, help="state dir (default: a new temporary dir)")
    fo.add_argument("--keep", action="store_true", help="keep the state dir (data, logs)")
    args = p.parse_args(argv)
    state = args.state or Path(tempfile.mkdtemp(prefix="kms-drill-"))
    figures = Figures()
    try:
        failover(args.compose.resolve(), state, figures)
    except (DrillFailed, ClusterError, ClientError, BotoCoreError, OSError,
            subprocess.TimeoutExpired, KeyError, ValueError) as exc:  # a figure is wrong
        figures.problems.append(f"{type(exc).__name__}: {exc}")
    print(figures.line(), flush=True)
    wrong = figures.wrong()
    for why in wrong:
        print(f"drill: wrong: {why}", file=sys.stderr)
    if wrong or args.keep:
        print(f"drill: data and node logs kept in {state}", file=sys.stderr)
    elif args.state is None:
        import shutil
        shutil.rmtree(state, ignore_errors=True)
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
