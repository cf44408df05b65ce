"""A promotion fences what the old primary wrote past the promotion's basis, in every
region and whatever order the rows arrive in: the fenced events change nothing in the
shared projection and are kept as conflicts; what the promoted region had seen stays."""

from __future__ import annotations

import dataclasses
import itertools

import pytest

from kms.domain import events as ev
from kms.domain import multi_region as mr
from kms.domain.errors import KMSInvalidStateException, UnsupportedOperationException
from kms.domain.key import Key, KeyState, created
from kms.store.state import State

KEY = "mrk-" + "0" * 32
US, EU, AP = "us-east-1", "eu-west-1", "ap-southeast-2"
STREAM = mr.mrk_stream(KEY)


def env(origin: str, seq: int, event: ev.Event, at_ms: int = 1000) -> ev.Envelope:
    return ev.Envelope(0, STREAM, 0, origin, seq, at_ms, event)


def shared(material_id: str, epoch: int) -> ev.MaterialShared:
    return ev.MaterialShared(KEY, material_id, b"", ((AP, b"sealed"),), "ON_DEMAND", 5, epoch)


BEFORE = [env(US, 1, ev.MultiRegionKeyCreated(KEY, "111122223333", US, "SYMMETRIC_DEFAULT",
                                              "ENCRYPT_DECRYPT", "AWS_KMS")),
          env(US, 2, ev.ReplicaAdded(KEY, EU, "", "{}", (), 1)),
          env(US, 3, ev.ReplicaAdded(KEY, AP, "", "{}", (), 1)),
          env(US, 4, shared("a" * 64, 1))]
SEEN_BY_EU = env(US, 5, shared("b" * 64, 1))  # reached eu-west-1 before it was promoted
CUT_OFF = env(US, 9, shared("c" * 64, 1), at_ms=7000)  # acknowledged, never reached eu
PROMOTED = env(EU, 1, mr.PrimaryRegionPromoted(KEY, EU, US, 2, 5))


def folded(order: list[ev.Envelope]) -> mr.MultiRegionKey:
    state = State()
    state(BEFORE + order)
    return state.mrks[KEY]


@pytest.mark.parametrize("order", list(itertools.permutations([SEEN_BY_EU, CUT_OFF, PROMOTED])))
def test_every_arrival_order_gives_the_same_fenced_projection(
        order: tuple[ev.Envelope, ...]) -> None:
    mrk = folded(list(order))
    assert (mrk.primary_region, mrk.epoch, mrk.accepted_epoch) == (EU, 2, 2)
    assert sorted(r.region for r in mrk.replicas) == [AP, US]
    assert [m.material_id[0] for m in mrk.materials] == ["a", "b"]
    assert mrk.conflicts == (mr.Conflict(US, 9, 1, "MaterialShared", 7000),)


def test_a_late_event_of_an_old_epoch_without_a_promotion_stays_fenced() -> None:
    handover = env(US, 6, ev.PrimaryRegionUpdated(KEY, EU, US, 2))
    mrk = folded([handover, env(US, 7, shared("d" * 64, 1))])
    assert [m.material_id[0] for m in mrk.materials] == ["a"]
    assert [c.origin_seq for c in mrk.conflicts] == [7]


def _replica(region: str, materials: tuple[str, ...] = ()) -> Key:
    key = created(ev.KeyCreated(KEY, "111122223333", region, "", "SYMMETRIC_DEFAULT",
                                "ENCRYPT_DECRYPT", "AWS_KMS", "CUSTOMER", True, "{}", (),
                                None, replica=True), 0)
    return dataclasses.replace(key, state=KeyState.ENABLED, materials=tuple(
        ev.Material(m, b"s") for m in materials), current_material_id=(materials or ("",))[-1])


def test_promotion_refusals() -> None:
    mrk = folded([SEEN_BY_EU])
    with pytest.raises(UnsupportedOperationException, match="already the primary key"):
        mr.promote(_replica(US, ("a" * 64,)), mrk, US, KEY, 0, 1)
    # "b" was sealed to ap-southeast-2, which has not taken it yet: promoting would lose it.
    with pytest.raises(KMSInvalidStateException, match="does not hold every key material"):
        mr.promote(_replica(AP, ("a" * 64,)), mrk, AP, KEY, 5, 1)
    done = mr.promote(_replica(AP, ("a" * 64, "b" * 64)), mrk, AP, KEY, 5, 3)
    assert (done.region, done.previous_region, done.epoch, done.basis_seq) == (AP, US, 4, 5)


def test_a_region_that_sees_only_the_new_primarys_rows_folds_the_whole_key() -> None:
    """One the promoted primary replicates to while the old primary is still down."""
    known = folded([SEEN_BY_EU])
    state = State()
    state([env(EU, n, e) for n, e in enumerate(
        [*mr.restatement(known), PROMOTED.event,
         ev.ReplicaAdded(KEY, "sa-east-1", "", "{}", (), 2)], start=1)])
    mrk = state.mrks[KEY]
    assert (mrk.primary_region, mrk.epoch) == (EU, 2)
    assert sorted(r.region for r in mrk.replicas) == sorted([AP, US, "sa-east-1"])
    state(BEFORE + [SEEN_BY_EU, CUT_OFF])  # the old primary's rows, once it is back
    assert state.mrks[KEY].primary_region == EU
    assert [c.origin_seq for c in state.mrks[KEY].conflicts] == [9]


# -- two promotions at the same epoch (an operator in each side of a partition) -------------
# us-east-1 is down; eu-west-1 and ap-southeast-2 cannot see each other and each is promoted
# at epoch 2. (2, "eu-west-1") > (2, "ap-southeast-2"): eu-west-1 wins in every region.
EU_PROMOTED = env(EU, 1, mr.PrimaryRegionPromoted(KEY, EU, US, 2, 5))
EU_WRITES = env(EU, 2, ev.MaterialShared(KEY, "e" * 64, b"", ((AP, b"s"), (US, b"s")),
                                         "ON_DEMAND", 8, 2), at_ms=8000)
AP_PROMOTED = env(AP, 1, mr.PrimaryRegionPromoted(KEY, AP, US, 2, 9))
AP_WRITES = env(AP, 2, ev.MaterialShared(KEY, "f" * 64, b"", ((EU, b"s"), (US, b"s")),
                                         "ON_DEMAND", 9, 2), at_ms=9000)
AP_SCHEDULE = env(AP, 3, ev.RotationScheduleShared(KEY, 90, 99, 2), at_ms=9500)


def _orders() -> list[list[ev.Envelope]]:
    """Every interleaving of the two regions' rows that keeps each region's own order (a
    region pulls each origin in that origin's order), and the old primary's cut-off row."""
    eu, ap = [EU_PROMOTED, EU_WRITES], [AP_PROMOTED, AP_WRITES, AP_SCHEDULE]
    out = []
    for slots in itertools.combinations(range(len(eu) + len(ap)), len(eu)):
        it_eu, it_ap = iter(eu), iter(ap)
        merged = [next(it_eu) if i in slots else next(it_ap) for i in range(len(eu) + len(ap))]
        for cut in range(len(merged) + 1):
            out.append([*merged[:cut], SEEN_BY_EU, CUT_OFF, *merged[cut:]])
    return out


@pytest.mark.parametrize("order", _orders())
def test_equal_epochs_are_ordered_by_region_name_in_every_arrival_order(
        order: list[ev.Envelope]) -> None:
    mrk = folded(order)
    assert (mrk.primary_region, mrk.epoch, mrk.accepted_epoch) == (EU, 2, 2)
    assert sorted(r.region for r in mrk.replicas) == [AP, US]
    assert sorted(m.material_id[0] for m in mrk.materials) == ["a", "b", "e"]  # not "f"
    assert (mrk.rotation_period_days, mrk.next_rotation_ms) == (0, 0)
    # The loser's writes under the epoch it lost are conflicts, as an old primary's are;
    # the old primary's row past the winner's basis too.
    assert sorted((c.origin_region, c.origin_seq, c.epoch, c.event_type)
                  for c in mrk.conflicts) == [
        (AP, 2, 2, "MaterialShared"), (AP, 3, 2, "RotationScheduleShared"),
        (US, 9, 1, "MaterialShared")]


def test_each_side_of_the_partition_is_primary_until_it_hears_of_the_other() -> None:
    assert folded([AP_PROMOTED, AP_WRITES]).primary_region == AP
    assert folded([EU_PROMOTED]).primary_region == EU
    assert mr.winner(folded([AP_PROMOTED, EU_PROMOTED]).promotions, 2) == mr.Promotion(
        EU, US, 2, 5)


def test_the_loser_turns_replica_and_encrypts_under_the_winners_version_again() -> None:
    mrk = folded([AP_PROMOTED, AP_WRITES, EU_PROMOTED, EU_WRITES])
    loser = dataclasses.replace(_replica(AP, ("a" * 64, "b" * 64, "f" * 64)),
                                materials=tuple(ev.Material(m * 64, b"s") for m in "abfe"),
                                current_material_id="f" * 64)
    assert mr.is_replica(loser, mrk)
    assert mr.restored_current(loser, mrk) == mr.CurrentMaterialRestored(KEY, "e" * 64)
    # A third region that took the loser's version before it heard of the winner's
    # promotion encrypts under a shared version again too.
    third = dataclasses.replace(loser, region=US, key_id=KEY)
    assert mr.restored_current(third, mrk) == mr.CurrentMaterialRestored(KEY, "e" * 64)
    # A later promotion (epoch 3) still outranks both.
    later = folded([AP_PROMOTED, EU_PROMOTED, env(
        AP, 4, mr.PrimaryRegionPromoted(KEY, AP, EU, 3, 2))])
    assert (later.primary_region, later.epoch) == (AP, 3)


# A handover to ap-southeast-2 at epoch 2 that eu-west-1 never saw, and eu-west-1 promoted at
# epoch 2: the promotion outranks the handover; what ap-southeast-2 wrote as its primary is
# fenced. (The handover reached ap-southeast-2 before us-east-1 went down.)
HANDED = env(US, 6, ev.PrimaryRegionUpdated(KEY, AP, US, 2))
ACCEPTED = env(AP, 1, ev.PrimaryRegionAccepted(KEY, AP, 2))
AP_AS_PRIMARY = env(AP, 2, ev.MaterialShared(KEY, "f" * 64, b"", ((EU, b"s"), (US, b"s")),
                                             "ON_DEMAND", 9, 2), at_ms=9000)


def _handover_orders() -> list[list[ev.Envelope]]:
    """The old primary's handover row anywhere among ap-southeast-2's rows (a third region
    pulls each origin on its own: ap-southeast-2's can come first, and wait), and
    eu-west-1's rows anywhere among those."""
    ap = [ACCEPTED, AP_AS_PRIMARY]
    out = []
    for us_at in range(3):
        rows = [*ap[:us_at], HANDED, *ap[us_at:]]
        for eu_at in range(4):
            out.append([*rows[:eu_at], EU_PROMOTED, EU_WRITES, *rows[eu_at:]])
    return out


@pytest.mark.parametrize("order", _handover_orders())
def test_a_promotion_outranks_a_handover_at_the_same_epoch_in_every_order(
        order: list[ev.Envelope]) -> None:
    mrk = folded([SEEN_BY_EU, *order])
    assert (mrk.primary_region, mrk.epoch, mrk.accepted_epoch) == (EU, 2, 2)
    assert sorted(r.region for r in mrk.replicas) == [AP, US]
    assert sorted(m.material_id[0] for m in mrk.materials) == ["a", "b", "e"]
    assert [(c.origin_region, c.origin_seq) for c in mrk.conflicts] == [(AP, 2)]
