"""The requests bench_replication.py makes: raw AWS JSON calls to one region's node, the
multi-region keys it sets up, the prober (one shared change at a time, then polled in every
replica until it shows) and the open-loop driver of lifecycle events.

Rules: loopback ``--dev`` nodes only (a fixed Authorization, no signature); the driver sends
request i at t0 + i/rate whatever the answers do, and keeps at most one request per key in
flight (so a shared row can be matched to its request by time, in replication_lag.py).
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import aiohttp

CTYPE = "application/x-amz-json-1.1"
MAX_ON_DEMAND = 25  # RotateKeyOnDemand's per-key quota
SHARED_KINDS = ("toggle", "rotate")
KIND_TARGETS = {"toggle": "EnableKeyRotation/DisableKeyRotation", "rotate": "RotateKeyOnDemand",
                "tag": "TagResource", "describe": "UpdateKeyDescription"}


def auth(region: str) -> str:
    """A fixed Authorization header scoped to ``region``: --dev reads only the access key
    and the scope, it verifies no signature (as bench_crypto does)."""
    return (f"AWS4-HMAC-SHA256 Credential=AKIABENCHMARK0000000/20240101/{region}/kms/"
            "aws4_request, SignedHeaders=content-type;host;x-amz-date;x-amz-target, "
            "Signature=" + "0" * 64)


class KmsError(Exception):
    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(f"{status} {kind}: {message}")
        self.status, self.kind = status, kind


class Endpoint:
    """One region's node, called with raw AWS JSON requests."""

    def __init__(self, session: aiohttp.ClientSession, region: str, url: str) -> None:
        self.session, self.region, self.url = session, region, url
        self.headers = {"Content-Type": CTYPE, "Authorization": auth(region),
                        "X-Amz-Date": "20240101T000000Z", "User-Agent": "kms-bench/1 replication"}

    async def call(self, target: str, body: dict[str, Any], timeout: float = 30.0
                   ) -> dict[str, Any]:
        async with self.session.post(
                self.url + "/", data=json.dumps(body),
                headers={**self.headers, "X-Amz-Target": f"TrentService.{target}"},
                timeout=aiohttp.ClientTimeout(total=timeout)) as r:
            text = await r.text()
            doc: dict[str, Any] = json.loads(text) if text else {}
            if r.status != 200:
                kind = str(doc.get("__type", "?")).rsplit("#", 1)[-1]
                raise KmsError(r.status, kind, str(doc.get("message", doc.get("Message", ""))))
            return doc

    async def health(self) -> dict[str, Any]:
        async with self.session.get(self.url + "/_kms/health",
                                    timeout=aiohttp.ClientTimeout(total=10)) as r:
            doc: dict[str, Any] = await r.json(content_type=None)
            return doc


@dataclass
class Sent:
    """One request the driver or the prober made."""

    kind: str
    key_id: str
    t_send: float
    t_answer: float = 0.0
    error: str | None = None
    seq: int | None = None  # the primary's row for it (shared kinds), once found



async def make_keys(primary: Endpoint, replicas: list[Endpoint], n: int, description: str
                    ) -> list[str]:
    """``n`` multi-region keys in the primary's region, each replicated to every replica
    region and Enabled there."""
    sem = asyncio.Semaphore(8)

    async def one() -> str:
        async with sem:
            meta = (await primary.call("CreateKey", {"MultiRegion": True,
                                                     "Description": description}))["KeyMetadata"]
            key_id = str(meta["KeyId"])
            for rep in replicas:
                await primary.call("ReplicateKey", {"KeyId": key_id,
                                                    "ReplicaRegion": rep.region})
            return key_id

    keys = list(await asyncio.gather(*(one() for _ in range(n))))
    deadline = time.monotonic() + 60 + n * 0.2
    for rep in replicas:
        waiting = set(keys)
        while waiting:
            for key_id in list(waiting):
                try:
                    meta = (await rep.call("DescribeKey", {"KeyId": key_id}))["KeyMetadata"]
                except KmsError as exc:
                    if exc.kind != "NotFoundException":
                        raise
                    continue
                if meta["KeyState"] == "Enabled":
                    waiting.discard(key_id)
            if waiting:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{len(waiting)} replicas in {rep.region} not Enabled "
                                       f"after {deadline:.0f} s")
                await asyncio.sleep(0.1)
    return keys


# -- the prober ---------------------------------------------------------------------------------
async def probe(primary: Endpoint, replicas: list[Endpoint], key_id: str, state: list[bool],
                stop: asyncio.Event, count: int | None, poll: float, gap: float,
                sent: list[Sent], visible: dict[str, list[float]], timeouts: Counter[str]
                ) -> None:
    """One shared change at a time on ``key_id`` (rotation on/off); after each, poll every
    replica's GetKeyRotationStatus until it shows the change (at most 10 s)."""
    done = 0
    while not stop.is_set() and (count is None or done < count):
        want = not state[0]
        s = Sent("toggle", key_id, time.time())
        try:
            await primary.call("EnableKeyRotation" if want else "DisableKeyRotation",
                               {"KeyId": key_id})
        except (KmsError, aiohttp.ClientError, TimeoutError) as exc:
            s.t_answer, s.error = time.time(), type(exc).__name__ + ": " + str(exc)[:120]
            sent.append(s)
            await asyncio.sleep(gap)
            continue
        s.t_answer = time.time()
        state[0] = want
        sent.append(s)

        async def seen(rep: Endpoint, s: Sent = s, want: bool = want) -> None:
            deadline = s.t_answer + 10
            while time.time() < deadline:
                t0 = time.time()
                try:
                    doc = await rep.call("GetKeyRotationStatus", {"KeyId": key_id})
                    if bool(doc.get("KeyRotationEnabled")) == want:
                        t = (t0 + time.time()) / 2
                        visible[rep.region].append(max(0.0, t - s.t_answer))
                        return
                except (KmsError, aiohttp.ClientError, TimeoutError):
                    pass
                await asyncio.sleep(poll)
            timeouts[rep.region] += 1

        await asyncio.gather(*(seen(r) for r in replicas))
        done += 1
        await asyncio.sleep(gap)


# -- the load -----------------------------------------------------------------------------------
@dataclass
class Driver:
    """Open loop: request i is sent at t0 + i/rate, whatever the earlier answers did
    (bounded by ``max_inflight``; a slot missed for that is counted, not sent later)."""

    primary: Endpoint
    keys: list[str]
    rate: float
    mix: dict[str, float]
    max_inflight: int
    seed: int = 1
    sent: list[Sent] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)
    substituted: int = 0
    inflight: int = 0
    max_seen_inflight: int = 0

    def __post_init__(self) -> None:
        self.free = deque(self.keys)
        random.Random(self.seed).shuffle(self.free)
        self.rng = random.Random(self.seed)
        self.rotation = dict.fromkeys(self.keys, False)
        self.on_demand = dict.fromkeys(self.keys, 0)
        self.tags = Counter[str]()

    def _pick_key(self, kind: str) -> str | None:
        """The free key that has waited longest (so one key's requests are far apart),
        skipping keys whose RotateKeyOnDemand quota is used up for ``rotate``."""
        for _ in range(min(len(self.free), 16)):
            key = self.free.popleft()
            if kind != "rotate" or self.on_demand[key] < MAX_ON_DEMAND:
                return key
            self.free.append(key)
        return None

    async def _one(self, kind: str, key: str) -> None:
        s = Sent(kind, key, time.time())
        try:
            if kind == "toggle":
                want = not self.rotation[key]
                await self.primary.call("EnableKeyRotation" if want else "DisableKeyRotation",
                                        {"KeyId": key})
                self.rotation[key] = want
            elif kind == "rotate":
                self.on_demand[key] += 1
                await self.primary.call("RotateKeyOnDemand", {"KeyId": key})
            elif kind == "tag":
                self.tags[key] += 1
                await self.primary.call("TagResource", {"KeyId": key, "Tags": [
                    {"TagKey": f"bench{self.tags[key] % 8}", "TagValue": str(self.tags[key])}]})
            else:
                await self.primary.call("UpdateKeyDescription",
                                        {"KeyId": key, "Description": f"bench {s.t_send:.6f}"})
        except KmsError as exc:
            s.error = f"{exc.status} {exc.kind}"
        except (aiohttp.ClientError, TimeoutError) as exc:
            s.error = type(exc).__name__
        finally:
            s.t_answer = time.time()
            self.sent.append(s)
            self.free.append(key)
            self.inflight -= 1

    async def run(self, seconds: float) -> float:
        kinds, weights = list(self.mix), list(self.mix.values())
        tasks: set[asyncio.Task[None]] = set()
        t0 = time.monotonic()
        total = int(self.rate * seconds)
        for i in range(total):
            due = t0 + i / self.rate
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            kind = self.rng.choices(kinds, weights)[0]
            if self.inflight >= self.max_inflight:
                self.skipped["inflight cap"] += 1
                continue
            key = self._pick_key(kind)
            if key is None and kind == "rotate":  # every free key used its quota
                kind, self.substituted = "toggle", self.substituted + 1
                key = self._pick_key(kind)
            if key is None:
                self.skipped["no free key"] += 1
                continue
            self.inflight += 1
            self.max_seen_inflight = max(self.max_seen_inflight, self.inflight)
            task = asyncio.create_task(self._one(kind, key))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        elapsed = time.monotonic() - t0
        if tasks:
            await asyncio.wait(tasks, timeout=60)
        return max(elapsed, seconds)

