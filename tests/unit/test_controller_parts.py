"""What the fleet's release controller builds on, alone: each LB's agreement with
Consul (the barrier), and the external pillar that makes the released version every
app host's (with what it says when Consul does not answer)."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.unit.conftest import load, utils

lb = load("modules", "cabify_lb")
released = load("pillar", "cabify_released")


@pytest.fixture
def haproxy(monkeypatch) -> dict:
    """BACKEND's servers as cabify_lb.servers gives them, and the states set."""
    found = {
        "servers": {
            "10.213.0.11:32768": {"name": "stable1", "state": "UP", "up": True, "weight": 1},
            "10.213.0.12:32768": {"name": "stable2", "state": "DRAIN", "up": False, "weight": 1},
            "10.213.0.13:32768": {"name": "stable3", "state": "UP", "up": True, "weight": 1},
            "10.213.0.13:32769": {"name": "stable4", "state": "DOWN", "up": False, "weight": 1},
        },
        "set": [],
    }
    monkeypatch.setattr(lb, "__utils__", utils(), raising=False)
    monkeypatch.setattr(lb, "servers", lambda backend: found["servers"])
    monkeypatch.setattr(lb, "set_state", lambda backend, slot, state: found["set"].append((slot, state)))
    return found


def test_an_lb_agrees_when_every_passing_instance_is_up_and_nothing_else(haproxy):
    expected = {"10.213.0.11:32768": 1, "10.213.0.12:32768": None, "10.213.0.13:32768": 1}
    assert lb.agreement("cabify", expected) == []
    # A slot a former drain left in drain, that DNS gave a replica that must serve, serves.
    assert haproxy["set"] == [("stable2", "ready")]


def test_an_lb_that_differs_says_how(haproxy):
    expected = {"10.213.0.11:32768": 3, "10.213.0.13:32769": None, "10.213.0.14:32768": None}
    assert lb.agreement("cabify", expected) == [
        "10.213.0.11:32768 weight 1, not 3",
        "10.213.0.13:32769 DOWN",
        "10.213.0.14:32768 missing (the slots hold 4 servers for 3: none free?)",
        "10.213.0.13:32768 UP but not passing in Consul",
    ]


class FakeConsul:
    def __init__(self, values: dict | Exception):
        self.values = values
        self.kv = self

    def get(self, key, recurse=False):
        if isinstance(self.values, Exception):
            raise self.values
        entries = [
            {"Key": k, "Value": json.dumps(v).encode()} for k, v in self.values.items() if k.startswith(key)
        ]
        return 1, entries


@pytest.fixture
def ext_pillar(monkeypatch):
    def make(values, app_hosts=("node1",)):
        funcs = utils()
        funcs["cabify_kv.fleet_client"] = lambda opts: FakeConsul(values)
        monkeypatch.setattr(released, "__utils__", funcs, raising=False)
        monkeypatch.setattr(released, "__opts__", {}, raising=False)

        class Minions:
            def __init__(self, opts):
                pass

            def check_minions(self, target, tgt_type):
                return {"minions": list(app_hosts)}

        monkeypatch.setattr(released.salt.utils.minions, "CkMinions", Minions)
        return released.ext_pillar

    return make


PILLAR = {"cabify": {"pools": {"cabify": {"version": "1"}, "shop": {"version": "1"}}}}


def test_the_released_version_is_an_app_hosts_pool_version(ext_pillar):
    values = {
        "cabify/released/cabify": {"version": 2, "release": "r1", "env": {"LOG": "debug"}},
        "cabify/released/other": {"version": "9"},
    }
    assert ext_pillar(values)("node1", PILLAR) == {
        "cabify": {"pools": {"cabify": {"version": "2", "env": {"LOG": "debug"}}}}
    }
    # Not one of the controller's app hosts, or no pool: nothing.
    assert ext_pillar(values)("lb1", PILLAR) == {}
    assert ext_pillar(values)("node1", {}) == {}


def test_a_consul_that_does_not_answer_is_said_not_hidden(ext_pillar):
    got = ext_pillar(ConnectionError("refused"))("node1", PILLAR)
    assert got == {"cabify": {"released_unreadable": "refused"}}


def test_a_lock_holders_process_is_gone_only_once_it_ended():
    tasks = load("utils", "cabify_tasks")
    assert tasks.process_gone(os.getpid()) is False
    assert tasks.process_gone(_reaped_pid()) is True
    assert tasks.process_gone("not a pid") is False


def _reaped_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid
