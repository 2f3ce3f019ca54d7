"""The cabify_pool.converged state through Salt's loader (mocked dunders): exact
`changes` computed first, `result: None` and nothing done under test=True, errors
turned into `result: False` with no changes."""

from __future__ import annotations

from unittest.mock import MagicMock

import pytest
from salt.exceptions import CommandExecutionError

from tests.unit.conftest import load, utils

state = load("states", "cabify_pool")
plan = load("utils", "cabify_plan")

ENV = {"DRAIN_TIMEOUT": "5"}


def replica(name: str, version: str = "1", role: str = "stable") -> dict:
    return {
        "name": name,
        "version": version,
        "role": role,
        "status": "running",
        "spec": plan.spec_hash(version, ENV),
        "address": "10.213.0.11",
        "port": 32768 + ord(name[-1]),
    }


class Host:
    """What the execution modules would say about a host, and what was asked of them."""

    def __init__(self, replicas: list[dict], registered: list[str] | None = None):
        self.replicas = replicas
        self.pillar: dict = {}
        names = [r["name"] for r in replicas] if registered is None else registered
        where = {r["name"]: {"address": r["address"], "port": r["port"]} for r in replicas}
        self.registered = {n: {"pool": "cabify", "status": "passing", **where.get(n, {})} for n in names}
        self.salt = {
            "cabify_pool.replica_env": lambda env, drain: {
                **(env or {}),
                "DRAIN_TIMEOUT": f"{float(drain):g}",
            },
            "cabify_pool.running": lambda pool: [r for r in self.replicas if r["status"] == "running"],
            "cabify_pool.plan": self.plan,
            "cabify_pool.converge": MagicMock(
                return_value={"started": ["cabify-1-new"], "removed": [], "reconciled": {}}
            ),
            "cabify_docker.replicas": lambda pool: self.replicas,
            "pillar.get": lambda key, default=None, **_: self.pillar.get(key, default),
            "cabify_consul.registrations": lambda pool: self.registered,
            "cabify_release.needs_recovery": MagicMock(return_value=False),
            "cabify_release.recover": MagicMock(return_value={"canaries_removed": ["cabify-2-old"]}),
            "cabify_release.rolling": MagicMock(
                return_value={"id": "r1", "replicas": {"started": ["a"], "removed": ["b"]}}
            ),
            "cabify_release.canary": MagicMock(
                return_value={"id": "r2", "replicas": {"started": ["a"], "removed": ["b"]}}
            ),
        }
        release = load("modules", "cabify_release")
        release.__utils__ = utils()
        self.salt["cabify_release.shares"] = release.shares
        self.salt["cabify_release.check_canary"] = release.check_canary

    def plan(self, pool, version, replicas, env, resources, role=None):
        return plan.plan(self.replicas, plan.spec_hash(version, env, resources), replicas, role)


@pytest.fixture(params=[False, True], ids=["real", "test"])
def test_mode(request) -> bool:
    return request.param


@pytest.fixture
def host() -> Host:
    return Host([replica("cabify-1-a"), replica("cabify-1-b"), replica("cabify-1-c")])


@pytest.fixture
def configure_loader_modules(host, test_mode):
    return {state: {"__salt__": host.salt, "__utils__": utils(), "__opts__": {"test": test_mode}}}


def converged(**kwargs):
    return state.converged("cabify", **{"version": "1", "replicas": 3, **kwargs})


def test_converged_pool_changes_nothing(host, test_mode):
    ret = converged()
    assert ret["result"] is True and ret["changes"] == {}
    assert "3 replica(s) of version 1 running and registered" in ret["comment"]
    host.salt["cabify_pool.converge"].assert_not_called()


def test_scaling_up_reports_the_plan_and_does_it_only_for_real(host, test_mode):
    ret = converged(replicas=5)
    if test_mode:
        assert ret["result"] is None and ret["changes"] == {"start": 2, "remove": []}
        assert ret["comment"].startswith("Would start 2 and remove 0 replica(s)")
        host.salt["cabify_pool.converge"].assert_not_called()
    else:
        assert ret["result"] is True and ret["changes"] == {"started": ["cabify-1-new"]}
        host.salt["cabify_pool.converge"].assert_called_once()


def test_a_missing_registration_is_a_change(host, test_mode):
    host.registered.pop("cabify-1-a")
    ret = converged()
    if test_mode:
        assert ret["result"] is None and ret["changes"] == {
            "start": 0,
            "remove": [],
            "register": ["cabify-1-a"],
        }
    else:
        host.salt["cabify_pool.converge"].assert_called_once()


def test_a_registration_at_a_port_the_replica_left_is_a_change(host, test_mode):
    """A replica that restarted got another host port from Docker: registered again."""
    host.registered["cabify-1-b"]["port"] = 40000
    ret = converged()
    if test_mode:
        assert ret["result"] is None and ret["changes"]["register"] == ["cabify-1-b"]
    else:
        host.salt["cabify_pool.converge"].assert_called_once()


def test_a_new_version_is_a_rolling_release_with_its_batches(host, test_mode):
    ret = converged(version="2", release={"max_parallel": 2, "min_healthy_time": 0})
    rolling = host.salt["cabify_release.rolling"]
    if test_mode:
        assert ret["result"] is None
        assert [b["start"] for b in ret["changes"]["release"]["batches"]] == [2, 1]
        rolling.assert_not_called()
    else:
        assert ret["result"] is True and ret["changes"] == {
            "release": "r1",
            "started": ["a"],
            "removed": ["b"],
        }
        args, kwargs = rolling.call_args
        assert args == ("cabify",) and kwargs["version"] == "2" and kwargs["max_parallel"] == 2
        assert kwargs["env"] == {} and kwargs["drain_timeout"] == 5


def test_a_failed_release_is_a_failed_state_with_no_changes(host, test_mode):
    host.salt["cabify_release.rolling"].side_effect = CommandExecutionError(
        "stopped at batch 1: boom; reverted"
    )
    ret = converged(version="2")
    if test_mode:
        assert ret["result"] is None
    else:
        assert ret["result"] is False and ret["changes"] == {}
        assert ret["comment"] == "pool cabify: stopped at batch 1: boom; reverted"


def test_a_canary_says_the_share_it_will_give(host, test_mode):
    canary = {"replicas": 1, "steps": [{"weight": 99, "pause": 1}, {"weight": 20, "pause": 1}]}
    ret = converged(version="2", release={"strategy": "canary"}, canary=canary)
    assert "step 1: 99% asked, 98.84% given with 3 stable + 1 canary replica(s)" in ret["comment"]
    assert "step 2" not in ret["comment"], "a reachable share needs no word"
    if test_mode:
        assert ret["result"] is None
        assert [s["given"] for s in ret["changes"]["release"]["steps"]] == [98.84, 20.0]
    else:
        assert ret["result"] is True and ret["changes"]["release"] == "r2"


def test_a_bad_canary_share_is_refused_naming_the_key(host, test_mode):
    ret = converged(
        version="2", release={"strategy": "canary"}, canary={"steps": [{"weight": 100, "pause": 1}]}
    )
    assert ret["result"] is False and ret["changes"] == {}
    assert "canary:steps: step 1: weight must be a percentage above 0 and below 100" in ret["comment"]
    host.salt["cabify_release.canary"].assert_not_called()


def test_what_a_dead_release_left_is_recovered_first(host, test_mode):
    host.salt["cabify_release.needs_recovery"].return_value = True
    ret = converged()
    recover = host.salt["cabify_release.recover"]
    if test_mode:
        assert ret["result"] is None and "recover" in ret["changes"]
        assert ret["comment"].startswith("Would recover pool cabify")
        recover.assert_not_called()
    else:
        assert ret["result"] is True and ret["changes"] == {
            "recovered": {"canaries_removed": ["cabify-2-old"]}
        }
        recover.assert_called_once_with("cabify")


def test_an_unknown_strategy_fails_and_changes_nothing(host, test_mode):
    ret = converged(version="2", release={"strategy": "blue-green"})
    assert ret["result"] is False and "release strategy 'blue-green' is not supported" in ret["comment"]
    host.salt["cabify_release.rolling"].assert_not_called()


def test_a_version_change_is_refused_while_the_released_version_cannot_be_read(host, test_mode):
    """The ext_pillar could not read Consul: the pillar files' version might undo the
    fleet's last release, so the pool keeps the version it runs (and says why)."""
    host.pillar["cabify:released_unreadable"] = "no Consul of the fleet answers with a leader"
    host.salt["cabify_consul.kv_get"] = MagicMock(side_effect=CommandExecutionError("connection refused"))
    ret = converged(version="2")
    assert ret["result"] is False and ret["changes"] == {}, ret
    assert "cannot be read" in ret["comment"] and "no Consul" in ret["comment"], ret["comment"]
    assert "this host's agent: connection refused" in ret["comment"], ret["comment"]
    host.salt["cabify_release.rolling"].assert_not_called()
    # Scaling the version it runs is no release: that still goes on.
    grown = converged(replicas=4)
    assert grown["result"] is (None if test_mode else True), grown
    assert grown["changes"] == ({"start": 1, "remove": []} if test_mode else {"started": ["cabify-1-new"]})


@pytest.mark.parametrize("released", [None, {"version": "7", "release": "r9"}], ids=["none", "released"])
def test_the_released_version_is_read_through_the_agent_when_the_pillar_could_not(host, test_mode, released):
    """A host that has just booted: its pillar was compiled before this highstate started
    Consul. The agent, up by the time the pool converges, says what the last release set
    (which wins over the pillar files' version, as in the pillar); no release there means
    the pillar files' version."""
    host.pillar["cabify:released_unreadable"] = "no Consul of the fleet answers with a leader"
    host.salt["cabify_consul.kv_get"] = MagicMock(return_value=released)
    ret = converged(version="2")
    host.salt["cabify_consul.kv_get"].assert_called_once_with("cabify/released/cabify")
    wanted = "7" if released else "2"
    if test_mode:
        assert ret["result"] is None and f"to version {wanted}" in ret["comment"], ret
    else:
        assert ret["result"] is True, ret
        assert host.salt["cabify_release.rolling"].call_args.kwargs["version"] == wanted
