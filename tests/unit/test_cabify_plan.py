"""The pool's plan: which replicas stay, how many start, which go."""

from __future__ import annotations

import pytest

from tests.unit.conftest import load

cabify = load("modules", "cabify")
beacon = load("beacons", "cabify_docker")


def replica(name, version="1", status="running", env=None, role="stable"):
    spec = cabify.spec_hash(version, env, None)
    return {"name": name, "version": version, "status": status, "spec": spec, "role": role}


@pytest.fixture
def pool(monkeypatch):
    current: list[dict] = []
    monkeypatch.setattr(cabify, "_list", lambda pool="cabify", all=True: current)
    return current


def test_converged_pool_needs_nothing(pool):
    pool += [replica("a"), replica("b"), replica("c")]
    assert cabify.plan("1", 3) == {"keep": ["a", "b", "c"], "start": 0, "remove": []}


def test_scale_up_and_down(pool):
    pool += [replica("a"), replica("b"), replica("c")]
    assert cabify.plan("1", 5)["start"] == 2
    assert cabify.plan("1", 2) == {"keep": ["a", "b"], "start": 0, "remove": ["c"]}


def test_new_version_replaces_every_replica(pool):
    pool += [replica("a"), replica("b")]
    assert cabify.plan("2", 2) == {"keep": [], "start": 2, "remove": ["a", "b"]}


def test_changed_env_replaces_and_dead_replicas_go(pool):
    pool += [replica("a", env={"FAULT": "slow"}), replica("b", status="exited"), replica("c")]
    assert cabify.plan("1", 2) == {"keep": ["c"], "start": 1, "remove": ["a", "b"]}


def test_spec_hash_ignores_env_order():
    assert cabify.spec_hash("1", {"A": "1", "B": "2"}) == cabify.spec_hash("1", {"B": "2", "A": "1"})
    assert cabify.spec_hash("1") != cabify.spec_hash("2")


@pytest.mark.parametrize(
    ("config", "ok"),
    [
        ([{"pool": "cabify"}, {"interval": 1}], True),
        ({"pool": "cabify"}, True),
        ("cabify", False),
        ([{"pool": 3}], False),
    ],
)
def test_beacon_validate_never_raises(config, ok):
    assert beacon.validate(config)[0] is ok


def test_canaries_are_never_kept_as_the_pool_and_a_role_limits_the_plan(pool):
    pool += [replica("a"), replica("b"), replica("c1", version="2", role="canary")]
    # A plain converge to version 2 does not count the canary as one of the pool.
    assert cabify.plan("2", 2) == {"keep": [], "start": 2, "remove": ["a", "b", "c1"]}
    # A canary's promotion rolls the stable replicas only.
    assert cabify.plan("2", 2, role="stable") == {"keep": [], "start": 2, "remove": ["a", "b"]}
