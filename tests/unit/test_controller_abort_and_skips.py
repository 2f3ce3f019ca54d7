"""Two parts of the fleet's release controller, alone, with a fake Consul KV and fake
LBs: a trigger skipped while the release of the same change holds the lock is counted
in that release's claim (not in the claim before it), and an aborted canary that an
LB picks up after the first drain is drained again until the abort is done."""

from __future__ import annotations

import threading
import time

import pytest

from tests.helpers import wait_for
from tests.unit.conftest import load, utils

controller = load("runners", "cabify_controller")


class FakeKV:
    """Consul's KV as py-consul gives it: get -> (index, entry), put with cas."""

    def __init__(self) -> None:
        self.entries: dict[str, dict] = {}
        self.index = 0
        self.lock = threading.Lock()
        self.kv = self
        self.reads: dict[str, int] = {}

    def get(self, key):
        with self.lock:
            self.reads[key] = self.reads.get(key, 0) + 1
            entry = self.entries.get(key)
            return self.index, dict(entry) if entry else None

    def put(self, key, value, cas=None):
        with self.lock:
            current = self.entries.get(key)
            if cas is not None and (current or {}).get("ModifyIndex", 0) != cas:
                return False
            self.index += 1
            self.entries[key] = {"Key": key, "Value": value.encode(), "ModifyIndex": self.index}
            return True


@pytest.fixture
def release(monkeypatch):
    monkeypatch.setattr(controller, "__utils__", utils(), raising=False)
    monkeypatch.setattr(controller, "BARRIER_POLL", 0.01)

    def make(rid: str, kv: FakeKV, trigger: str | None = None):
        made = object.__new__(controller.Release)
        made.id, made.pool, made.consul = rid, "cabify", kv
        made.request = {"trigger": trigger}
        made.record = {}
        return made

    return make


def test_a_skip_that_comes_before_its_releases_claim_is_counted_in_that_claim(release):
    kv = FakeKV()
    kv.put("cabify/triggers/cabify", '{"index": 0, "release": "r-old", "skipped": []}')
    kv.put("cabify/desired/cabify", '{"version": "2"}')
    change = kv.get("cabify/desired/cabify")[1]["ModifyIndex"]
    first, second = (
        release("r-first", kv, "cabify/desired/cabify"),
        release("r-second", kv, "cabify/desired/cabify"),
    )
    # The second asker skips (the lock is held) before the first release wrote its
    # claim: it either counted itself at once (in the claim before) or waits.
    skipper = threading.Thread(target=second.note_skip, args=("release r-first is running", True))
    skipper.start()
    wait_for(
        lambda: not skipper.is_alive() or kv.reads.get("cabify/triggers/cabify", 0) >= 3,
        5,
        "the skip counted, or waiting for the claim",
    )
    first.put(
        "cabify/triggers/cabify",
        {"key": "cabify/desired/cabify", "index": change, "release": "r-first", "skipped": []},
    )
    skipper.join(5)
    claim = controller._kv("decode", kv.get("cabify/triggers/cabify")[1]["Value"])
    assert claim["release"] == "r-first"
    assert [s["id"] for s in claim["skipped"]] == ["r-second"]


def test_a_skip_whose_change_is_gone_is_counted_at_once(release):
    kv = FakeKV()
    kv.put("cabify/triggers/cabify", '{"index": 0, "release": "r-old", "skipped": []}')
    began = time.monotonic()
    release("r-late", kv, "cabify/desired/cabify").note_skip("cabify/desired/cabify is gone")
    assert time.monotonic() - began < 1
    claim = controller._kv("decode", kv.get("cabify/triggers/cabify")[1]["Value"])
    assert [s["id"] for s in claim["skipped"]] == ["r-late"]


def test_a_canary_an_lb_fills_after_the_abort_drained_the_others_is_drained_too(release, monkeypatch):
    monkeypatch.setattr(controller, "CANARY_REDRAIN", 0.01)
    aborting = release("r-canary", FakeKV())
    aborting.lbs = ["lb1", "lb2", "lb3"]
    # lb3 has no stats page: the abort's own drain reaches it through Salt.
    aborting.pages = {"lb1": "http://lb1:8404/stats;csv", "lb2": "http://lb2:8404/stats;csv", "lb3": None}
    # lb2 gets its canary slot from DNS only after the first drain.
    slots = {"lb1": [], "lb2": [], "lb3": ["canary1"]}
    drained = []

    def canaries_off(lb: str, salt_too: bool = True) -> str:
        assert not salt_too, "the keeper went through Salt"
        if not slots[lb]:
            return "none yet"
        drained.append((lb, slots[lb].pop()))
        return "stats page"

    monkeypatch.setattr(aborting, "canaries_off", canaries_off)
    done = threading.Event()
    result = {}
    keeper = threading.Thread(target=lambda: result.update(late=aborting.keep_canaries_off(done)))
    keeper.start()
    slots["lb2"].append("canary1")
    wait_for(lambda: drained, 2, "lb2's late canary slot drained", interval=0.01)
    done.set()
    keeper.join(2)
    assert not keeper.is_alive(), "the keeper went on after the abort was done"
    assert drained == [("lb2", "canary1")]
    assert result["late"] == {"lb2": 1}


def test_only_canary_slots_that_take_requests_are_drained_again(release, monkeypatch):
    aborting = release("r-canary", FakeKV())
    rows = [
        {"svname": "canary1", "addr": "10.0.0.1:80", "status": "UP", "weight": "1"},
        {"svname": "canary2", "addr": "10.0.0.2:80", "status": "UP 1/2", "weight": "3"},
        {"svname": "canary3", "addr": "10.0.0.3:80", "status": "DRAIN", "weight": "0"},
        {"svname": "canary4", "addr": "10.0.0.4:80", "status": "DOWN", "weight": "1"},
        {"svname": "canary5", "addr": "", "status": "MAINT (resolution)", "weight": "1"},
        {"svname": "stable1", "addr": "10.0.0.9:80", "status": "UP", "weight": "1"},
        {"svname": "canary6", "addr": "10.0.0.6:80", "status": "no check", "weight": "1"},
    ]
    assert [r["svname"] for r in aborting.serving_canaries(rows)] == ["canary1", "canary2", "canary6"]
