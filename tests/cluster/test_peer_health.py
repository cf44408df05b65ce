"""Per-peer health during a stalled link: three region processes (compose.yaml's) with every
peer link through a fault proxy; a partition stalls the open long-polls (drop mode), and
``/_kms/health`` must show the cut-off peer unreachable with the time of its last answer,
while the links that still pass stay reachable, and show it reachable again after heal."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ops.cluster import Cluster
from tests.support.expect import eventually

pytestmark = pytest.mark.slow

COMPOSE = Path(__file__).resolve().parents[2] / "compose.yaml"
US, EU, AP = "us-east-1", "eu-west-1", "ap-southeast-2"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    started = Cluster.up(COMPOSE, tmp_path_factory.mktemp("peer-health"), proxied=True)
    try:
        yield started
    finally:
        started.down(quiet=True)


def views(cluster: Cluster) -> dict[tuple[str, str], dict[str, Any]]:
    """(region, peer) -> that region's health figures for the peer."""
    return {(region, peer): figures for region, doc in cluster.health().items()
            for peer, figures in (doc.get("peers") or {}).items()}  # type: ignore[union-attr]


def test_a_stalled_link_shows_its_peer_unreachable_until_heal(cluster: Cluster) -> None:
    def all_reachable() -> Any:
        seen = views(cluster)
        return len(seen) == 6 and all(f["reachable"] for f in seen.values()) and seen

    before = eventually(all_reachable, "every peer reachable", 60)
    cluster.partition(US, EU)  # both directions: open connections stall, new ones reset

    def cut_off() -> Any:
        seen = views(cluster)
        return (seen[(EU, US)]["reachable"] is False and seen[(US, EU)]["reachable"] is False
                and seen)

    during = eventually(cut_off, "us-east-1 and eu-west-1 to show each other unreachable", 90)
    for link in ((EU, US), (US, EU)):
        figures = during[link]
        assert figures["last_contact_ms"] >= before[link]["last_contact_ms"]
        assert figures["error"]  # why: no answer past the wait, or the reset connections
    for link in ((AP, US), (AP, EU), (US, AP), (EU, AP)):  # untouched links
        assert during[link]["reachable"] is True, during[link]

    cluster.heal()

    def back() -> Any:
        seen = views(cluster)
        return all(seen[link]["reachable"] and seen[link]["last_contact_ms"]
                   > during[link]["last_contact_ms"] for link in ((EU, US), (US, EU))) and seen

    after = eventually(back, "the peers reachable again after heal", 90)
    assert "error" not in after[(EU, US)] and "error" not in after[(US, EU)]
