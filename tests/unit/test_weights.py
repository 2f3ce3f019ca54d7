"""Shares of requests as per-replica weights: exact where reachable, never beyond what
Consul (16 bits) and HAProxy (1-256) can hold, and the share really given when the
asked one is out of reach."""

from __future__ import annotations

import pytest

from tests.unit.conftest import load

weights = load("utils", "cabify_weights")


@pytest.mark.parametrize(
    ("share", "new", "old", "expected"),
    [(20, 1, 3, (3, 4)), (20, 2, 2, (1, 4)), (50, 1, 3, (3, 1)), (10, 1, 3, (1, 3)), (25, 1, 3, (1, 1))],
)
def test_split_gives_the_share_exactly(share, new, old, expected):
    found = weights.split(share, new, old)
    assert (found["new"], found["old"]) == expected
    assert found["share"] == pytest.approx(share, abs=0.01)


@pytest.mark.parametrize("share", [1, 5, 33, 66.6, 95])
@pytest.mark.parametrize(("new", "old"), [(1, 1), (1, 3), (2, 5), (1, 10)])
def test_split_stays_within_a_twentieth_of_a_point(share, new, old):
    found = weights.split(share, new, old)
    assert 1 <= found["new"] <= 256 and 1 <= found["old"] <= 256
    assert found["share"] == pytest.approx(share, abs=0.05)


@pytest.mark.parametrize(("share", "new", "old"), [(99, 1, 3), (99.9, 1, 10), (0.05, 1, 3), (0.001, 3, 1)])
def test_unreachable_shares_are_approached_and_said(share, new, old):
    found = weights.split(share, new, old)
    assert 1 <= found["new"] <= 256 and 1 <= found["old"] <= 256
    assert weights.consul_passing(found["new"]) <= 65535 and weights.consul_passing(found["old"]) <= 65535
    assert found["asked"] == share and found["share"] != pytest.approx(share, abs=0.05)
    # the closest the weights can do: the extreme pair
    extreme = (256, 1) if share > 50 else (1, 256)
    assert (found["new"], found["old"]) == extreme


def test_ninety_nine_with_three_stable_gives_98_84():
    assert weights.reachable(99, 1, 3) == 98.84


@pytest.mark.parametrize("share", [0, 100, -5, 150, "x", None, True])
def test_shares_outside_zero_and_hundred_are_refused(share):
    with pytest.raises(ValueError, match="above 0 and below 100"):
        weights.split(share, 1, 3)


def test_consul_passing_never_overflows_and_haproxy_reads_it_back():
    for k in range(1, 257):
        passing = weights.consul_passing(k)
        assert 1 <= passing <= 65535
        assert weights.haproxy_weight(passing) == k
    with pytest.raises(ValueError):
        weights.consul_passing(257)
    with pytest.raises(ValueError):
        weights.consul_passing(0)


def test_no_replica_on_one_side_needs_no_skew():
    assert weights.split(30, 0, 3)["share"] == 0.0
    assert weights.split(30, 2, 0)["share"] == 100.0


def test_promotion_share_only_rises_as_replicas_change_hands():
    """With the last step's weights kept, every new stable replica that joins and
    every old one that goes raises the new version's share, up to 100 %."""
    split = weights.split(60, 1, 3)
    new, old, shares = 1, 3, [weights.share_of(split["new"], 1, split["old"], 3)]
    for _ in range(3):
        new += 1
        shares.append(weights.share_of(split["new"], new, split["old"], old))
        old -= 1
        shares.append(weights.share_of(split["new"], new, split["old"], old))
    assert shares == sorted(shares) and shares[0] == pytest.approx(60, abs=0.05) and shares[-1] == 100


def test_stored_weights_carry_the_spec_and_the_share_given():
    stored = weights.stored(20, 1, 9, "abc")
    assert stored == {"spec": "abc", "new": 9, "old": 4, "asked": 20.0, "share": 20.0}
