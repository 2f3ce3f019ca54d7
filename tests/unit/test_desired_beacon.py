"""The cabify_desired beacon through Salt's loader mock: one event per change of a
pool's desired version, none for what was already seen, even after a restart of the
beacon or a Consul that answers with nothing while it starts."""

from __future__ import annotations

import pytest

from tests.unit.conftest import Utils, load

beacon = load("beacons", "cabify_desired")
CONFIG = [{"prefix": "cabify/desired/"}]


class Consul:
    def __init__(self):
        self.values: dict = {}

    def kv_tree(self, prefix, consistent=False):
        assert consistent, "the beacon must read consistently (a restarting Consul answers stale values)"
        return dict(self.values)


@pytest.fixture
def consul():
    return Consul()


@pytest.fixture
def configure_loader_modules(consul, tmp_path):
    return {
        beacon: {
            "__salt__": {
                "cabify_consul.kv_tree": consul.kv_tree,
                "cabify_consul.desired_request": Utils("cabify_kv")["cabify_kv.desired_request"],
            },
            "__opts__": {"cachedir": str(tmp_path)},
            "__context__": {},
        }
    }


def test_first_pass_remembers_then_each_change_is_one_event(consul):
    consul.values = {"cabify/desired/cabify": "1"}
    assert beacon.beacon(CONFIG) == []
    consul.values = {
        "cabify/desired/cabify": "2",
        "cabify/desired/shop": {"version": "3", "strategy": "canary"},
    }
    events = beacon.beacon(CONFIG)
    assert {e["pool"]: (e["version"], e["previous"]) for e in events} == {
        "cabify": ("2", "1"),
        "shop": ("3", None),
    }
    assert events[1]["strategy"] == "canary"
    assert beacon.beacon(CONFIG) == []


def test_a_restart_or_an_empty_answer_releases_nothing_again(consul):
    consul.values = {"cabify/desired/cabify": "1"}
    beacon.beacon(CONFIG)
    consul.values = {"cabify/desired/cabify": "2"}
    assert len(beacon.beacon(CONFIG)) == 1
    beacon.__context__.clear()  # the beacons reloaded, or the minion restarted
    consul.values = {}  # Consul starting: nothing yet
    assert beacon.beacon(CONFIG) == []
    consul.values = {"cabify/desired/cabify": "2"}
    assert beacon.beacon(CONFIG) == []


def test_a_mapping_without_a_version_is_no_release(consul):
    beacon.beacon(CONFIG)
    consul.values = {"cabify/desired/cabify": {"strategy": "canary"}}
    assert beacon.beacon(CONFIG) == []
