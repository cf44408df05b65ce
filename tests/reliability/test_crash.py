"""Nothing acknowledged is lost by a crash: concurrent CreateKey/Encrypt writers run
against a real node that is SIGKILLed K times mid-load and restarted on the same
data directory; then every acknowledged key and ciphertext must still be there.

Rules: only HTTP 200 answers with a parsed body count as acknowledged; a request
cut by a kill is simply not counted. The run is seeded and bounded (< 60 s).
"""

from __future__ import annotations

import asyncio
import base64
import json
import random
import sqlite3
import time
from collections import Counter
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from kms.store.log import GENESIS, row_hash
from tests.support.server import ServerProcess

SEED = 20240611
KILLS = 3
WRITERS = 8
BUDGET_S = 55.0
AUTH = ("AWS4-HMAC-SHA256 Credential=AKIDCRASHTEST/20240101/us-east-1/kms/aws4_request, "
        "SignedHeaders=host;x-amz-date, Signature=" + "0" * 64)

pytestmark = pytest.mark.slow


class Unacknowledged(Exception):
    """The request got no answer (the node died under it)."""


@dataclass
class Ledger:
    """Everything the node acknowledged, in the order it was acknowledged."""

    keys: list[str] = field(default_factory=list)
    ciphertexts: list[tuple[str, bytes, bytes, dict[str, str] | None]] = field(
        default_factory=list)
    unacknowledged: int = 0
    refused: list[str] = field(default_factory=list)  # non-200 answers: should never happen


class Kms:
    """A bare AWS JSON 1.1 client (dev mode does not check the signature)."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session = session
        self.url = url

    async def call(self, operation: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        headers = {"X-Amz-Target": f"TrentService.{operation}",
                   "Content-Type": "application/x-amz-json-1.1", "Authorization": AUTH}
        try:
            async with self.session.post(self.url + "/", data=json.dumps(body),
                                         headers=headers) as r:
                text = await r.text()
                status = r.status
        except (TimeoutError, aiohttp.ClientError, ConnectionError) as exc:
            raise Unacknowledged(repr(exc)) from exc
        doc: dict[str, Any] = json.loads(text) if text else {}
        return status, doc


async def writer(kms: Kms, rng: random.Random, ledger: Ledger, up: asyncio.Event,
                 done: asyncio.Event, wid: int) -> None:
    mine: list[str] = []
    n = 0
    while not done.is_set():
        await up.wait()
        if done.is_set():
            return
        n += 1
        try:
            if not mine or rng.random() < 0.3:
                status, doc = await kms.call("CreateKey", {"Description": f"w{wid}-{n}"})
                if status == 200:
                    key_id = doc["KeyMetadata"]["KeyId"]
                    mine.append(key_id)
                    ledger.keys.append(key_id)
            else:
                key_id = rng.choice(mine)
                plaintext = rng.randbytes(rng.randint(1, 256))
                context = ({"writer": str(wid), "n": str(n)} if rng.random() < 0.5 else None)
                body: dict[str, Any] = {"KeyId": key_id,
                                        "Plaintext": base64.b64encode(plaintext).decode()}
                if context is not None:
                    body["EncryptionContext"] = context
                status, doc = await kms.call("Encrypt", body)
                if status == 200:
                    ledger.ciphertexts.append(
                        (key_id, base64.b64decode(doc["CiphertextBlob"]), plaintext, context))
            if status != 200:
                ledger.refused.append(f"{status} {doc}")
        except Unacknowledged:
            ledger.unacknowledged += 1
            await asyncio.sleep(0.01)  # polling for the restart (`up` is cleared around a kill)


async def health_seq(session: aiohttp.ClientSession, url: str) -> int:
    async with session.get(url + "/_kms/health") as r:
        doc = await r.json()
    assert doc["status"] == "ok"
    return int(doc["log_seq"])


async def run_load(node: ServerProcess, ledger: Ledger, rng: random.Random) -> list[int]:
    """K rounds of load -> SIGKILL -> restart, then one clean round; returns the health
    log_seq seen just before each kill (anything health reports must survive the kill)."""
    seqs_before_kill: list[int] = []
    up, done = asyncio.Event(), asyncio.Event()
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout,
                                     connector=aiohttp.TCPConnector(limit=64)) as session:
        kms = Kms(session, node.url)
        tasks = [asyncio.create_task(writer(kms, random.Random(rng.random()), ledger, up, done, w))
                 for w in range(WRITERS)]
        for _ in range(KILLS):
            up.set()
            await asyncio.sleep(rng.uniform(0.3, 1.0))  # the deliberate load window
            seqs_before_kill.append(await health_seq(session, node.url))
            await asyncio.to_thread(node.kill)
            up.clear()
            await asyncio.to_thread(node.start)
            after = await health_seq(session, node.url)
            assert after >= seqs_before_kill[-1], "a log_seq reported by health was lost"
        up.set()
        await asyncio.sleep(0.3)  # a clean round after the last restart
        done.set()
        await asyncio.gather(*tasks)
    return seqs_before_kill


@dataclass
class Verdict:
    lost_keys: list[str]
    lost_ciphertexts: int
    listed: list[str]
    health_seq: int


async def verify(node: ServerProcess, ledger: Ledger) -> Verdict:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10),
                                     connector=aiohttp.TCPConnector(limit=16)) as session:
        kms = Kms(session, node.url)
        gate = asyncio.Semaphore(16)

        async def key_present(key_id: str) -> bool:
            async with gate:
                status, doc = await kms.call("DescribeKey", {"KeyId": key_id})
            return status == 200 and doc["KeyMetadata"]["KeyId"] == key_id \
                and doc["KeyMetadata"]["KeyState"] == "Enabled"

        async def decrypts(item: tuple[str, bytes, bytes, dict[str, str] | None]) -> bool:
            key_id, blob, plaintext, context = item
            body: dict[str, Any] = {"CiphertextBlob": base64.b64encode(blob).decode()}
            if context is not None:
                body["EncryptionContext"] = context
            async with gate:
                status, doc = await kms.call("Decrypt", body)
            return (status == 200 and base64.b64decode(doc["Plaintext"]) == plaintext
                    and doc["KeyId"].endswith("key/" + key_id))

        present = await asyncio.gather(*(key_present(k) for k in ledger.keys))
        decrypted = await asyncio.gather(*(decrypts(c) for c in ledger.ciphertexts))

        listed: list[str] = []
        marker: str | None = None
        while True:
            status, doc = await kms.call("ListKeys", {"Limit": 1000,
                                                      **({"Marker": marker} if marker else {})})
            assert status == 200, doc
            listed += [k["KeyId"] for k in doc["Keys"]]
            if not doc.get("Truncated"):
                break
            marker = doc["NextMarker"]
        seq = await health_seq(session, node.url)
    return Verdict([k for k, ok in zip(ledger.keys, present, strict=True) if not ok],
                   decrypted.count(False), listed, seq)


def audit_log(db_path: Path) -> tuple[int, int, int, bool, int]:
    """(rows, version gaps, seq gaps, hash chain ok, streams with two KeyCreated)."""
    with closing(sqlite3.connect(db_path)) as db:
        rows = db.execute("SELECT seq, stream, version, type, origin_region, origin_seq, at_ms, "
                          "body, prev_hash, hash FROM events ORDER BY seq").fetchall()
    versions: dict[str, list[int]] = {}
    created: Counter[str] = Counter()
    prev, chain = GENESIS, True
    for seq, stream, version, type_name, region, origin_seq, at_ms, body, p, h in rows:
        versions.setdefault(stream, []).append(version)
        if type_name == "KeyCreated":
            created[stream] += 1
        if p != prev or row_hash(prev, seq, stream, version, type_name, region, origin_seq,
                                 at_ms, body) != h:
            chain = False
        prev = h
    version_gaps = sum(v != list(range(1, len(v) + 1)) for v in versions.values())
    seq_gaps = int([r[0] for r in rows] != list(range(1, len(rows) + 1)))
    return len(rows), version_gaps, seq_gaps, chain, sum(n > 1 for n in created.values())


def test_nothing_acknowledged_is_lost_across_sigkills(data_dir: Path) -> None:
    started = time.monotonic()
    rng = random.Random(SEED)
    ledger = Ledger()
    node = ServerProcess(data_dir).start()
    try:
        seqs_before_kill = asyncio.run(asyncio.wait_for(run_load(node, ledger, rng), BUDGET_S))
        node.kill()  # one more crash with no load, then the restart that verifies the chain
        node.start()
        verdict = asyncio.run(asyncio.wait_for(verify(node, ledger), BUDGET_S))
    finally:
        node.stop()
    rows, version_gaps, seq_gaps, chain_ok, created_twice = audit_log(data_dir / "events.sqlite3")

    n = len(ledger.keys) + len(ledger.ciphertexts)
    lost = len(verdict.lost_keys) + verdict.lost_ciphertexts
    duplicates = len(verdict.listed) - len(set(verdict.listed)) + created_twice
    gaps = version_gaps + seq_gaps
    print(f"\n  keys {len(ledger.keys)}, ciphertexts {len(ledger.ciphertexts)}, "
          f"unacknowledged {ledger.unacknowledged}, log rows {rows}, "
          f"log_seq before kills {seqs_before_kill}, {time.monotonic() - started:.1f} s")
    print(f"acknowledged lost: {lost} of {n} over {KILLS} kills; duplicates {duplicates}; "
          f"version gaps {gaps}; hash chain {'ok' if chain_ok else 'BROKEN'}")

    assert len(ledger.keys) > KILLS and len(ledger.ciphertexts) > KILLS, "too little load ran"
    assert ledger.refused == [], ledger.refused[:5]
    assert verdict.lost_keys == [] and verdict.lost_ciphertexts == 0
    assert set(ledger.keys) <= set(verdict.listed)
    assert duplicates == 0 and gaps == 0 and chain_ok
    assert verdict.health_seq == rows, "health log_seq disagrees with the stored log"
    assert max(seqs_before_kill) <= rows
