"""The release's lock and history bookkeeping (cabify_release) with a fake Consul: a
recovery that holds the pool's lock is waited for, another release is refused by
name, and the history keeps its newest records."""

from __future__ import annotations

import pytest
from salt.exceptions import CommandExecutionError

from tests.unit.conftest import load, utils


class FakeConsul:
    """The lock and KV functions of cabify_consul over dicts; HOLDERS are who holds
    the lock at each attempt (None: free, so the attempt takes it)."""

    def __init__(self, holders: list[dict | None], kv: dict | None = None):
        self.holders = list(holders)
        self.kv = dict(kv or {})
        self.attempts = 0

    def lock_acquire(self, key, value, ttl):
        self.attempts += 1
        return None if self.holders and self.holders[0] is not None else "session-1"

    def lock_holder(self, key):
        return self.holders.pop(0) if self.holders else None

    def kv_tree(self, prefix):
        return {k: v for k, v in self.kv.items() if k.startswith(prefix)}

    def kv_delete(self, key):
        return self.kv.pop(key, None) is not None

    def salt(self) -> dict:
        names = ("lock_acquire", "lock_holder", "kv_tree", "kv_delete")
        return {f"cabify_consul.{name}": getattr(self, name) for name in names}


@pytest.fixture
def release(monkeypatch):
    module = load("modules", "cabify_release")
    module.__utils__ = utils()
    monkeypatch.setattr(module.time, "sleep", lambda seconds: None)
    return module


RECOVERY = {"id": "recovery-ab12", "strategy": "recovery", "minion": "web1"}
RUNNING = {"id": "20261126T090000-cd34", "strategy": "rolling", "to": "2", "minion": "web1", "started": "now"}


def test_a_recovery_holding_the_lock_is_waited_for(release):
    consul = FakeConsul([RECOVERY, RECOVERY, None])
    release.__salt__ = consul.salt()
    assert release._take_lock("cabify", "cabify/locks/cabify", {"id": "r"}, 30) == "session-1"
    assert consul.attempts == 3


def test_a_lock_let_go_between_attempt_and_look_is_tried_again(release):
    consul = FakeConsul([{"gone": True}])
    consul.lock_holder = lambda key: None  # free by the time its holder is read
    attempts = iter([None, "session-2"])
    consul.lock_acquire = lambda key, value, ttl: next(attempts)
    release.__salt__ = consul.salt()
    assert release._take_lock("cabify", "cabify/locks/cabify", {"id": "r"}, 30) == "session-2"


def test_another_release_is_refused_naming_it(release):
    consul = FakeConsul([RUNNING, RUNNING])
    release.__salt__ = consul.salt()
    with pytest.raises(CommandExecutionError, match="release 20261126T090000-cd34 to version 2 on web1"):
        release._take_lock("cabify", "cabify/locks/cabify", {"id": "r"}, 30)
    assert consul.attempts == 1


def test_history_keeps_the_newest_records_and_any_running_one(release):
    kv = {f"cabify/history/cabify/2026112{n}": {"id": f"2026112{n}", "result": "succeeded"} for n in range(6)}
    kv["cabify/history/cabify/20261120"]["result"] = "running"
    consul = FakeConsul([], kv)
    release.__salt__ = consul.salt()
    assert release.prune_history("cabify", keep=3) == ["20261122", "20261121"]
    assert sorted(consul.kv) == [f"cabify/history/cabify/2026112{n}" for n in (0, 3, 4, 5)]
