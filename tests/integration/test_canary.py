"""Canary releases: exact traffic shares through Consul weights, step-wise analysis of
HAProxy's live figures, a promotion whose share never steps back, aborts by the
analysis, by a crash and by the operator, all with a load client that sees no failed
request."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

import pytest

from tests.helpers import (
    consul,
    failed_states,
    haproxy_info,
    haproxy_servers,
    is_up,
    kv_get,
    last_release,
    pool_lock_held,
    pool_settled,
    pool_state,
    versions_running,
    wait_for,
)
from tests.integration.conftest import QUICK_RELEASE, STACK_SPEC, converge_pool, ensure_pool, unique_version
from tests.integration.test_release import FAST, wait_release_end
from tests.load import LoadClient

QUICK_ANALYSIS = {"min_requests": 10, "interval": 1, "inconclusive_limit": 20}


def canary_pillar(version: str, env: dict | None = None, steps: list | None = None, **canary) -> dict:
    settings = {
        "replicas": 1,
        "steps": steps or [{"weight": 20, "pause": 3}, {"weight": 50, "pause": 3}],
        "analysis": QUICK_ANALYSIS,
        **canary,
    }
    # Promotion in one batch: the long canary test watches a promotion batch by batch.
    release = FAST | {"strategy": "canary", "max_parallel": 3}
    # The stack's own env by default: the next test finds the pool as it wants it.
    pool = {"version": version, "replicas": 3, "env": env or STACK_SPEC["env"], "release": release}
    return {"cabify": {"pools": {"cabify": pool | {"canary": settings}}}}


def canary_state() -> dict:
    return kv_get("cabify/canary/cabify/state") or {}


@pytest.fixture
def manual_canary_lock() -> Iterator[None]:
    """The pool's release lock, held by the test as an operator's manual canary would:
    canary replicas with no release holding the lock are what a dead release left
    behind, and the heal removes them."""
    with pool_lock_held({"id": "test-manual-canary", "strategy": "manual", "to": "canary-share"}):
        yield


def spec_of(name: str) -> str:
    import docker  # noqa: PLC0415

    return docker.from_env().containers.get(name).labels["cabify.spec-hash"]


@pytest.fixture
def stable_pool(salt_cli, highstate):
    """3 stable replicas of one version (whichever the last test left), no canary
    weights left behind; that version."""
    yield ensure_pool(salt_cli, version=None)
    assert kv_get("cabify/weights/cabify") is None or salt_cli.run("cabify_pool.clear_weights", "cabify")


def start_canaries(salt_cli, version: str, count: int) -> list[str]:
    ret = salt_cli.run("cabify_docker.build_image", version, "/var/cache/cabify/app", "cabify-base:bookworm")
    assert ret.returncode == 0, ret.stderr
    names = []
    for _ in range(count):
        ret = salt_cli.run("cabify_pool.start", "cabify", version, role="canary", env={"DRAIN_TIMEOUT": "5"})
        assert ret.returncode == 0, ret.stderr
        names.append(ret.data["name"])
    return names


@pytest.mark.parametrize(("stable", "canaries"), [(3, 1), (2, 2)])
def test_weight_is_the_share_of_requests_whatever_the_counts(
    salt_cli, stable_pool, stable, canaries, manual_canary_lock
):
    if stable != 3:
        converge_pool(salt_cli, replicas=stable, release=QUICK_RELEASE)
    names = start_canaries(salt_cli, "canary-share", canaries)
    try:
        ret = salt_cli.run("cabify_pool.set_weights", "cabify", 20, spec_of(names[0]))
        assert ret.returncode == 0, ret.stderr
        wait_for(lambda: pool_settled(stable + canaries), 30, "stable and canary replicas UP in HAProxy")
        with LoadClient(workers=4, max_requests=2400) as load:
            wait_for(lambda: load.requests_so_far() >= 2400, 120, "2 400 requests through HAProxy")
        share = load.result.versions["canary-share"] / load.result.requests
        load.assert_served()
        assert abs(share - 0.20) <= 0.03, f"canary share {share:.1%} with {stable} stable + {canaries} canary"
    finally:
        salt_cli.run("cabify_pool.remove_role", "cabify", "canary", 1)


def weights_by_role() -> dict[str, set[int]]:
    found: dict[str, set[int]] = {}
    for server in haproxy_servers():
        if is_up(server["status"]):
            found.setdefault(server["svname"].rstrip("0123456789"), set()).add(int(server["weight"]))
    return found


def test_weight_change_needs_no_reload_and_survives_one(salt_cli, stable_pool, manual_canary_lock):
    pid = haproxy_info()["Pid"]
    names = start_canaries(salt_cli, "canary-share", 1)
    try:
        assert salt_cli.run("cabify_pool.set_weights", "cabify", 20, spec_of(names[0])).returncode == 0
        wait_for(
            lambda: weights_by_role() == {"stable": {4}, "canary": {3}},
            30,
            "stable servers at weight 4 and the canary, once UP, at 3",
        )
        assert haproxy_info()["Pid"] == pid, "HAProxy was reloaded for a weight change"
        assert salt_cli.run("service.reload", "haproxy").returncode == 0
        wait_for(lambda: haproxy_info()["Pid"] != pid, 30, "HAProxy's reload")
        wait_for(
            lambda: weights_by_role() == {"stable": {4}, "canary": {3}},
            30,
            "the canary weights back in the reloaded HAProxy (from the SRV records)",
        )
    finally:
        salt_cli.run("cabify_pool.remove_role", "cabify", "canary", 1)


def test_unreachable_share_is_said_before_and_during_the_release(salt_cli, stable_pool):
    pillar = canary_pillar(unique_version("c-99-"), steps=[{"weight": 99, "pause": 1}])
    dry = pool_state(salt_cli.run("state.apply", "cabify", test=True, pillar=pillar).data)
    assert dry["result"] is None
    assert "step 1: 99% asked, 98.84% given with 3 stable + 1 canary replica(s)" in dry["comment"], dry[
        "comment"
    ]
    assert dry["changes"]["release"]["steps"][0]["given"] == 98.84


def test_long_canary_through_orch_succeeds_and_promotion_never_steps_back(salt_run_cli, stable_pool):
    """A canary of more than 80 s through orch.canary: the orchestration reports the
    release's own success (Salt's batch driver gave up at 70 s before), and from the
    moment promotion starts the new version's share only rises, from the last step's 60 %."""
    steps = [{"weight": 20, "pause": 20}, {"weight": 60, "pause": 45}]
    new = unique_version("c-good-")
    pillar = {
        "release": {
            "pool": "cabify",
            "version": new,
            "settings": FAST | {"min_healthy_time": 1},
            "canary": {"steps": steps, "analysis": QUICK_ANALYSIS},
        }
    }
    phases: dict[str, float] = {}
    result: dict = {}
    before = canary_state().get("release")
    started = time.monotonic()
    with LoadClient(workers=8, max_seconds=300, keep_samples=True) as load:
        orch = threading.Thread(
            target=lambda: result.update(
                ret=salt_run_cli.run("state.orchestrate", "orch.canary", pillar=pillar)
            )
        )
        orch.start()
        while orch.is_alive():
            live = canary_state()
            phase = live.get("phase") if live.get("release") not in (None, before) else None
            if phase and phase not in phases:
                phases[phase] = time.monotonic()
            orch.join(timeout=0.2)
    ret = result["ret"]
    assert ret.returncode == 0, str(ret.data)[-3000:]
    took = time.monotonic() - started
    assert took > 80, f"the canary took {took:.0f}s: too short to prove the orchestration waits long enough"
    load.assert_served()
    assert versions_running() == {new: 3}
    record = last_release()
    assert record["strategy"] == "canary" and record["result"] == "succeeded" and record["to"] == new
    assert canary_state()["phase"] == "promoted" and kv_get("cabify/weights/cabify") is None
    assert "promoting" in phases, phases
    shares = _shares_after(load.samples, phases["promoting"], new, window=2.0)
    assert shares, f"no answers after promotion started: phases {phases}, {len(load.samples)} samples"
    assert shares[0] >= 55, f"the share at promotion fell below the last step's 60 %: {shares}"
    for number, share in enumerate(shares[1:], start=1):
        assert share >= max(shares[:number]) - 6, (
            f"the new version's share stepped back during promotion: {shares}"
        )
    assert shares[-1] >= 95, f"the promotion did not end with the new version alone: {shares}"


def _shares_after(samples, since: float, version: str, window: float) -> list[float]:
    """The share (%) of VERSION's answers in each WINDOW seconds from SINCE on."""
    buckets: dict[int, list[int]] = {}
    for ended, _, answered in samples:
        if ended >= since and answered:
            bucket = buckets.setdefault(int((ended - since) // window), [0, 0])
            bucket[0] += answered == version
            bucket[1] += 1
    return [round(100 * new / total, 1) for _, (new, total) in sorted(buckets.items()) if total >= 50]


@pytest.mark.parametrize(
    ("fault", "why"),
    [({"FAULT": "http500"}, "error rate"), ({"FAULT": "crash", "CRASH_AFTER": "4"}, "crashed")],
)
def test_broken_canary_is_aborted_and_clients_see_no_error(salt_cli, stable_pool, fault, why):
    steps = [{"weight": 20, "pause": 15}, {"weight": 50, "pause": 15}]
    with LoadClient(max_seconds=300) as load:
        ret = salt_cli.run(
            "state.apply", "cabify", pillar=canary_pillar(unique_version("c-bad-"), fault, steps)
        )
        assert ret.returncode != 0, "a broken canary was promoted"
        wait_for(lambda: pool_settled(3), 30, "the stable pool alone, UP in HAProxy")
    load.assert_served()
    assert versions_running() == {stable_pool: 3}
    record = last_release()
    assert record["result"] == "failed" and why in record["reason"], record["reason"]
    if fault["FAULT"] == "http500":
        assert "step 1" in record["reason"], record["reason"]
    assert canary_state()["phase"] == "aborted" and kv_get("cabify/weights/cabify") is None


@contextlib.contextmanager
def canary_in_background(salt_cli, pillar: dict) -> Iterator[dict]:
    """A canary release running in a thread; its salt-call result lands in ["ret"]. A
    test that fails half-way aborts it, so that no release outlives the test."""
    result: dict = {}
    thread = threading.Thread(
        target=lambda: result.update(ret=salt_cli.run("state.apply", "cabify", pillar=pillar))
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


def test_without_auto_promote_the_canary_waits_for_promote(salt_cli, salt_run_cli, stable_pool):
    new = unique_version("c-manual-")
    pillar = canary_pillar(new, steps=[{"weight": 20, "pause": 2}], auto_promote=False)
    with LoadClient(max_seconds=300) as load, canary_in_background(salt_cli, pillar) as result:
        wait_for(
            lambda: canary_state().get("phase") == "waiting for promote",
            120,
            "the canary waiting for promote",
        )
        assert versions_running() == {stable_pool: 3, new: 1}
        ret = salt_run_cli.run("cabify.promote")
        assert ret.data["result"] is True, ret.data
    assert result["ret"].returncode == 0, failed_states(result["ret"].data)
    load.assert_served()
    assert versions_running() == {new: 3}


def test_operator_abort_mid_step_rolls_back(salt_cli, salt_run_cli, stable_pool):
    with LoadClient(max_seconds=300) as load:
        pillar = canary_pillar(unique_version("c-abort-"), steps=[{"weight": 20, "pause": 120}])
        with canary_in_background(salt_cli, pillar) as result:
            wait_for(lambda: canary_state().get("phase") == "analysing", 120, "the canary's first step")
            ret = salt_run_cli.run("cabify.abort", "cabify")
            assert ret.data["result"] is True, ret.data
        wait_for(lambda: pool_settled(3), 30, "the stable pool alone, UP in HAProxy")
    assert result["ret"].returncode != 0
    assert "aborted by the operator" in last_release()["reason"]
    load.assert_served()
    assert versions_running() == {stable_pool: 3} and kv_get("cabify/weights/cabify") is None


def test_release_event_can_ask_for_a_canary(salt_cli, stable_pool):
    new = unique_version("c-event-")
    settings = {"replicas": 1, "steps": [{"weight": 20, "pause": 2}], "analysis": QUICK_ANALYSIS}
    data = {
        "pool": "cabify",
        "version": new,
        "strategy": "canary",
        "canary": settings,
        "settings": QUICK_RELEASE,
    }
    with LoadClient(max_seconds=300) as load:
        assert salt_cli.run("event.send", "cabify/release/request", data=data).returncode == 0
        record = wait_release_end(new)
        wait_for(lambda: pool_settled(3), 30, "3 replicas registered and UP after the promotion")
    assert record["strategy"] == "canary" and record["result"] == "succeeded", record
    load.assert_served()
    assert versions_running() == {new: 3}
