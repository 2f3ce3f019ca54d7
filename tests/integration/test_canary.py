"""Canary releases: exact traffic shares through Consul weights, step-wise analysis of
HAProxy's live figures, promotion, abort by the analysis, by a crash and by the
operator, all with a load client that sees no failed request."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import pytest

from tests.helpers import consul, failed_states, haproxy_info, haproxy_servers, wait_for
from tests.integration.test_pool import pool_settled
from tests.integration.test_release import FAST, last_release, versions_running, wait_release_end
from tests.load import LoadClient

QUICK_ANALYSIS = {"min_requests": 10, "interval": 1, "inconclusive_limit": 20}


def canary_pillar(version: str, env: dict | None = None, steps: list | None = None, **canary) -> dict:
    settings = {
        "replicas": 1,
        "steps": steps or [{"weight": 20, "pause": 4}, {"weight": 50, "pause": 4}],
        "analysis": QUICK_ANALYSIS,
        **canary,
    }
    return {
        "cabify": {
            "version": version,
            "replicas": 3,
            "env": env or {},
            "release": FAST | {"strategy": "canary"},
            "canary": settings,
        }
    }


def canary_state() -> dict:
    return consul("GET", "/v1/kv/cabify/canary/cabify/state?raw=true") or {}


@pytest.fixture
def stable_pool(salt_call_cli, highstate):
    """3 stable replicas of version 1, and no canary weights left behind."""
    pillar = {"cabify": {"version": "1", "replicas": 3}}
    ret = salt_call_cli.run("state.apply", "cabify", pillar=pillar, queue=True)
    assert ret.returncode == 0, failed_states(ret.data)
    wait_for(lambda: pool_settled(3) and versions_running() == {"1": 3}, 60, "3 stable replicas of version 1")
    yield
    salt_call_cli.run("cabify_canary.clear_weights")


def start_canaries(salt_call_cli, version: str, count: int) -> list[str]:
    ret = salt_call_cli.run("state.apply", "cabify.install", pillar={"cabify": {"version": version}})
    assert ret.returncode == 0, failed_states(ret.data)
    names = []
    for _ in range(count):
        ret = salt_call_cli.run("cabify.start_replica", "cabify", version, role="canary")
        assert ret.returncode == 0, ret.stderr
        names.append(ret.data["name"])
        assert salt_call_cli.run("cabify.register", names[-1]).returncode == 0
    return names


@pytest.mark.parametrize(("stable", "canaries"), [(3, 1), (2, 2)])
def test_weight_is_the_share_of_requests_whatever_the_counts(salt_call_cli, stable_pool, stable, canaries):
    if stable != 3:
        salt_call_cli.run("state.apply", "cabify", pillar={"cabify": {"version": "1", "replicas": stable}})
        wait_for(lambda: pool_settled(stable), 60, f"{stable} stable replicas")
    names = start_canaries(salt_call_cli, "canary-share", canaries)
    try:
        ret = salt_call_cli.run("cabify_canary.set_weight", 20)
        assert ret.returncode == 0, ret.stderr
        wait_for(lambda: pool_settled(stable + canaries), 30, "stable and canary replicas UP in HAProxy")
        with LoadClient(workers=4, max_requests=2400) as load:
            wait_for(lambda: load.requests_so_far() >= 2400, 120, "2 400 requests through HAProxy")
        share = load.result.versions["canary-share"] / load.result.requests
        assert load.result.failed == 0, load.result.failures
        assert abs(share - 0.20) <= 0.03, f"canary share {share:.1%} with {stable} stable + {canaries} canary"
    finally:
        for name in names:
            salt_call_cli.run("cabify.drain", name, drain_timeout=1)


def test_weight_change_needs_no_reload_and_survives_one(salt_call_cli, stable_pool):
    pid = haproxy_info()["Pid"]
    names = start_canaries(salt_call_cli, "canary-share", 1)
    try:
        assert salt_call_cli.run("cabify_canary.set_weight", 20).returncode == 0
        wait_for(
            lambda: weights_by_role() == {"stable": {4}, "canary": {3}},
            30,
            "stable servers at weight 4 and the canary, once UP, at 3",
        )
        assert haproxy_info()["Pid"] == pid, "HAProxy was reloaded for a weight change"
        assert salt_call_cli.run("service.reload", "haproxy").returncode == 0
        wait_for(lambda: haproxy_info()["Pid"] != pid, 30, "HAProxy's reload")
        wait_for(
            lambda: weights_by_role() == {"stable": {4}, "canary": {3}},
            30,
            "the canary weights back in the reloaded HAProxy (from the SRV records)",
        )
    finally:
        for name in names:
            salt_call_cli.run("cabify.drain", name, drain_timeout=1)


def weights_by_role() -> dict[str, set[int]]:
    found: dict[str, set[int]] = {}
    for server in haproxy_servers():
        if server["status"] == "UP":
            found.setdefault(server["svname"].rstrip("0123456789"), set()).add(int(server["weight"]))
    return found


def test_healthy_canary_is_promoted_through_orch_canary(salt_run_cli, stable_pool):
    pillar = canary_pillar("c-good")
    del pillar["cabify"]["release"]["strategy"]  # orch.canary sets it
    with LoadClient(max_seconds=300) as load:
        ret = salt_run_cli.run("state.orchestrate", "orch.canary", pillar=pillar)
        assert ret.returncode == 0, str(ret.data)[-3000:]
        wait_for(lambda: pool_settled(3), 30, "3 replicas registered and UP after the promotion")
    assert load.result.failed == 0, load.result.failures
    assert versions_running() == {"c-good": 3}
    assert load.result.versions["c-good"] > 0 and load.result.versions["1"] > 0
    record = last_release()
    assert record["strategy"] == "canary" and record["result"] == "succeeded" and record["to"] == "c-good"
    assert canary_state()["phase"] == "promoted"


@pytest.mark.parametrize(
    ("fault", "why"),
    [({"FAULT": "http500"}, "error rate"), ({"FAULT": "crash", "CRASH_AFTER": "4"}, "crashed")],
)
def test_broken_canary_is_aborted_and_clients_see_no_error(salt_call_cli, stable_pool, fault, why):
    before = versions_running()
    steps = [{"weight": 20, "pause": 15}, {"weight": 50, "pause": 15}]
    with LoadClient(max_seconds=300) as load:
        ret = salt_call_cli.run("state.apply", "cabify", pillar=canary_pillar("c-bad", fault, steps))
        assert ret.returncode != 0, "a broken canary was promoted"
        wait_for(lambda: pool_settled(3), 30, "the stable pool alone, UP in HAProxy")
    assert load.result.failed == 0, load.result.failures
    assert versions_running() == before == {"1": 3}
    record = last_release()
    assert record["result"] == "failed" and why in record["reason"], record["reason"]
    if fault["FAULT"] == "http500":
        assert "step 1" in record["reason"], record["reason"]
    assert canary_state()["phase"] == "aborted"


@contextlib.contextmanager
def canary_in_background(salt_call_cli, pillar: dict) -> Iterator[dict]:
    """A canary release running in a thread; its salt-call result lands in ["ret"]. A
    test that fails half-way aborts it, so that no release outlives the test."""
    result: dict = {}
    thread = threading.Thread(
        target=lambda: result.update(ret=salt_call_cli.run("state.apply", "cabify", pillar=pillar))
    )
    thread.start()
    try:
        yield result
    except BaseException:
        if thread.is_alive():
            consul("PUT", "/v1/kv/cabify/canary/cabify/command", "abort")
        raise
    finally:
        thread.join(timeout=300)


def test_without_auto_promote_the_canary_waits_for_promote(salt_call_cli, salt_run_cli, stable_pool):
    steps = [{"weight": 20, "pause": 2}]
    pillar = canary_pillar("c-manual", steps=steps, auto_promote=False)
    with LoadClient(max_seconds=300) as load, canary_in_background(salt_call_cli, pillar) as result:
        wait_for(
            lambda: canary_state().get("phase") == "waiting for promote",
            120,
            "the canary waiting for promote",
        )
        assert versions_running() == {"1": 3, "c-manual": 1}
        ret = salt_run_cli.run("cabify.promote")
        assert ret.data["result"] is True, ret.data
    assert result["ret"].returncode == 0, failed_states(result["ret"].data)
    assert load.result.failed == 0, load.result.failures
    assert versions_running() == {"c-manual": 3}


def test_operator_abort_mid_step_rolls_back(salt_call_cli, salt_run_cli, stable_pool):
    steps = [{"weight": 20, "pause": 120}]
    with LoadClient(max_seconds=300) as load:
        with canary_in_background(salt_call_cli, canary_pillar("c-abort", steps=steps)) as result:
            wait_for(lambda: canary_state().get("phase") == "analysing", 120, "the canary's first step")
            ret = salt_run_cli.run("cabify.abort")
            assert ret.data["result"] is True, ret.data
        wait_for(lambda: pool_settled(3), 30, "the stable pool alone, UP in HAProxy")
    assert result["ret"].returncode != 0
    assert "aborted by the operator" in last_release()["reason"]
    assert load.result.failed == 0, load.result.failures
    assert versions_running() == {"1": 3}


def test_release_event_can_ask_for_a_canary(salt_call_cli, stable_pool):
    settings = {"replicas": 1, "steps": [{"weight": 20, "pause": 3}], "analysis": QUICK_ANALYSIS}
    data = {"version": "c-event", "strategy": "canary", "canary": settings}
    with LoadClient(max_seconds=300) as load:
        assert salt_call_cli.run("event.send", "cabify/release/request", data=data).returncode == 0
        record = wait_release_end("c-event")
        wait_for(lambda: pool_settled(3), 30, "3 replicas registered and UP after the promotion")
    assert record["strategy"] == "canary" and record["result"] == "succeeded", record
    assert load.result.failed == 0, load.result.failures
    assert versions_running() == {"c-event": 3}
