"""The region host's tasks and locks, in one process on real nodes: stopping a puller never
swallows a cancellation of the caller (but still waits when the caller was cancelled
before, as aiohttp's cleanup is), and a dev reset never waits on ``RegionHost._opening``
while a node's scheduler waits for it (a rotation looking up a replica region)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from kms.config import Config
from kms.node import Node
from regions.host import RegionHost
from regions.replication import Puller
from regions.topology import Topology

BOUND = 60.0  # a bound for a stuck run, not a timing assertion


def blocked_puller(release: asyncio.Event) -> Puller:
    """A puller whose fetch never returns (a long poll in flight) and, once cancelled,
    ends only when ``release`` is set (a read being torn down)."""
    async def fetch(after: int) -> Any:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            await release.wait()
            raise

    receiver: Any = SimpleNamespace(log=SimpleNamespace(cursor=lambda region: 0),
                                    config=SimpleNamespace(region="eu-west-1"))
    puller = Puller(receiver, "us-east-1", fetch, reactor=None)  # type: ignore[arg-type]
    puller.start()
    return puller


async def until(check: Any) -> None:
    async def wait() -> None:
        while not check():
            await asyncio.sleep(0)
    await asyncio.wait_for(wait(), BOUND)


def test_a_caller_cancelled_while_it_stops_a_puller_is_cancelled() -> None:
    async def main() -> None:
        release = asyncio.Event()
        puller = blocked_puller(release)
        await asyncio.sleep(0)  # the puller's task is in its fetch
        task = puller._task
        assert task is not None
        stopper = asyncio.create_task(puller.stop())
        await until(lambda: task.cancelling())  # the stopper cancelled it and waits
        stopper.cancel()
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(stopper, BOUND)
        assert task.done()

    asyncio.run(main())


def test_a_caller_cancelled_before_still_waits_for_the_puller_to_end() -> None:
    async def main() -> None:
        release = asyncio.Event()
        puller = blocked_puller(release)
        await asyncio.sleep(0)
        task = puller._task
        assert task is not None
        stopped = asyncio.Event()

        async def cleanup() -> None:  # as aiohttp's cleanup in its cancelled main task
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                await puller.stop()
                stopped.set()
                raise

        cleaner = asyncio.create_task(cleanup())
        await asyncio.sleep(0)
        cleaner.cancel()
        await until(lambda: task.cancelling())  # the cleanup stops the puller
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(cleaner, BOUND)
        assert stopped.is_set() and task.done()

    asyncio.run(main())


def test_a_reset_does_not_deadlock_with_a_rotation_looking_up_a_region(tmp_path: Path,
                                                                      ) -> None:
    """The scheduler holds its lock while a rotation looks up a replica region's identity
    (opening it on first use); a reset meanwhile must not hold ``_opening`` while it waits
    for that scheduler."""
    async def main() -> None:
        node = Node(Config(data_dir=tmp_path, region="us-east-1", dev=True))
        host = RegionHost(node, Topology.parse("us-east-1"))
        await host.start()
        try:
            await host.open("eu-west-1")  # two regions: pullers to stop and restart
            async with node.scheduler.paused():  # a scheduler run in progress
                reset = asyncio.create_task(host.reset())
                lock: Any = node.scheduler.paused()
                await until(lambda: bool(getattr(lock, "_waiters", None)))  # waits for it
                # What _rotate -> replica_identities does with the lock held:
                public = await asyncio.wait_for(host.identity_public_key("ap-southeast-2"),
                                                BOUND)
                assert public is not None and len(public) == 32
            await asyncio.wait_for(reset, BOUND)
            assert {n.config.region for n in host.nodes()} == {
                "us-east-1", "eu-west-1", "ap-southeast-2"}
            # replication runs again between every region, the one opened meanwhile too
            assert set(host.replication.nodes) == {"us-east-1", "eu-west-1", "ap-southeast-2"}
            assert len(host.replication.pullers) == 6
        finally:
            await host.stop()

    asyncio.run(main())
