"""An LB's slots kept to what Consul says after HAProxy loaded saved servers: a slot
whose replica Consul no longer lists for its role goes to maintenance at the second
sweep that finds it absent, and comes back when listed again; and a slot in maintenance
beside another one of the same address never hides the one that serves."""

from __future__ import annotations

import pytest

from tests.unit.conftest import load

lb = load("modules", "cabify_lb")
analysis = load("utils", "cabify_analysis")

FORCED_MAINT, FORCED_DRAIN, NO_ADDRESS = 0x01, 0x08, 0x20


@pytest.fixture
def slots(monkeypatch) -> dict:
    """BACKEND's slots as ``show servers state`` gives them, and the states set."""
    found = {
        "rows": [
            {"name": "stable1", "address": "10.0.0.1", "port": 8080, "admin_state": 0},
            {"name": "stable2", "address": "10.0.0.9", "port": 8080, "admin_state": 0},  # gone
            {"name": "stable3", "address": None, "port": 0, "admin_state": NO_ADDRESS},
            {"name": "stable4", "address": "10.0.0.4", "port": 8080, "admin_state": FORCED_DRAIN},
            {"name": "stable5", "address": "10.0.0.5", "port": 8080, "admin_state": FORCED_MAINT},  # back
            {"name": "canary1", "address": "10.0.0.1", "port": 8080, "admin_state": 0},  # a stable's
        ],
        "set": [],
    }
    monkeypatch.setattr(lb, "server_states", lambda backend: found["rows"])
    monkeypatch.setattr(lb, "set_state", lambda backend, slot, state: found["set"].append((slot, state)))
    return found


PASSING = {"stable": ["10.0.0.1:8080", "10.0.0.4:8080", "10.0.0.5:8080"]}


def test_a_slot_consul_no_longer_lists_goes_to_maintenance_at_the_second_sweep(slots):
    first = lb.sweep_slots("cabify", PASSING)
    assert first["maint"] == [] and first["absent"] == ["stable2@10.0.0.9:8080", "canary1@10.0.0.1:8080"]
    assert slots["set"] == [("stable5", "ready")], "a slot listed again comes back at once"
    slots["set"].clear()
    second = lb.sweep_slots("cabify", PASSING, first["absent"])
    # The canary slot holds a stable replica's address: not a canary, out as well.
    assert second["maint"] == ["stable2@10.0.0.9:8080", "canary1@10.0.0.1:8080"]
    assert ("stable2", "maint") in slots["set"] and ("canary1", "maint") in slots["set"]
    assert not any(slot in ("stable3", "stable4") for slot, _ in slots["set"]), "drained or empty slots moved"


def test_with_no_stable_replica_passing_the_stable_slots_stay(slots):
    found = lb.sweep_slots("cabify", {}, ["stable2@10.0.0.9:8080", "stable1@10.0.0.1:8080"])
    assert all(not slot.startswith("stable") for slot, _ in slots["set"]), slots["set"]
    assert found["absent"] == ["canary1@10.0.0.1:8080"]


def test_a_slot_in_maintenance_does_not_hide_the_one_that_serves_the_same_address():
    rows = [
        {"svname": "stable1", "addr": "10.0.0.1:8080", "status": "UP", "scur": "2"},
        {"svname": "stable9", "addr": "10.0.0.1:8080", "status": "MAINT", "scur": "0"},
        {"svname": "stable2", "addr": "10.0.0.2:8080", "status": "MAINT", "scur": "0"},
    ]
    found = analysis.servers(rows)
    assert found["10.0.0.1:8080"]["name"] == "stable1" and found["10.0.0.1:8080"]["up"]
    assert found["10.0.0.2:8080"]["name"] == "stable2"


def test_only_serving_servers_are_kept_for_a_haproxy_that_starts_during_an_outage():
    dump = (
        "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state\n"
        "3 cabify 1 stable1 10.0.0.1 2 64 1\n"  # UP, its name from DNS: kept
        "3 cabify 2 stable2 10.0.0.2 2 1 1\n"  # in maintenance (swept aside)
        "3 cabify 3 stable3 - 0 32 1\n"  # no address
        "3 cabify 4 stable4 10.0.0.4 0 0 1\n"  # DOWN
        "3 cabify 5 stable5 10.0.0.5 2 8 1\n"  # drained by a release
    )
    kept = lb._serving_only(dump)
    assert kept.splitlines()[2:] == ["3 cabify 1 stable1 10.0.0.1 2 64 1"]
    assert kept.startswith("1\n# be_id")
