"""Every failure path of a release leaves the pool whole: the old version at full count,
no stale weights in KV, and a history record with the reason. Faults are injected at
the release's failpoints (see _utils/cabify_failpoints.py) while it talks to the real
dockerd, Consul and HAProxy; a lost lock is a session really destroyed in Consul."""

from __future__ import annotations

import threading

import pytest

from tests.helpers import (
    consul,
    failed_states,
    kv_get,
    last_release,
    pool_settled,
    running_replicas,
    versions_running,
    wait_for,
)
from tests.integration.conftest import unique_version
from tests.integration.test_canary import canary_pillar, canary_state
from tests.integration.test_release import release
from tests.load import LoadClient


def assert_pool_whole(version: str) -> None:
    wait_for(lambda: pool_settled(3), 30, "the pool back to 3 registered replicas, UP in HAProxy")
    assert versions_running() == {version: 3}
    assert kv_get("cabify/weights/cabify") is None, "stale weights left in KV"


@pytest.mark.parametrize(
    ("failpoint", "prefix", "what"),
    [("pool.drain", "f-drain-", "failed to drain"), ("docker.stop", "f-stop-", "failed to stop")],
    ids=["drain", "stop"],
)
def test_old_replica_that_fails_to_drain_or_stop_is_given_back(
    salt_cli, steady, failpoints, failpoint, prefix, what
):
    """dockerd errs once: on the drain of an old replica mid-release, or on its stop in
    the background once drained (the release then stops at its next batch). The
    release reverts: the very same old replica serves again, and nothing of the new
    version stays."""
    before = running_replicas()
    failpoints({failpoint: {"action": "docker-error", "times": 1}})
    with LoadClient(max_seconds=120) as load:
        ret = release(salt_cli, unique_version(prefix))
        assert ret.returncode != 0, f"a release whose old replica {what} succeeded"
        assert_pool_whole(steady)
    load.assert_served()
    assert running_replicas() == before, f"the old replica that {what} was not given back"
    record = last_release()
    assert (
        record["result"] == "failed" and f"injected failure at failpoint {failpoint}" in record["reason"]
    ), record


def test_revert_that_fails_is_retried_until_the_pool_is_whole(salt_cli, steady, failpoints):
    """The release fails after its first drain; the revert's first attempt to give that
    replica back fails too (dockerd errs), and its retry does."""
    failpoints(
        {
            "release.drain": {"action": "error", "times": 1},
            "pool.restore": {"action": "docker-error", "times": 1},
        }
    )
    with LoadClient(max_seconds=120) as load:
        ret = release(salt_cli, unique_version("f-revert-"))
        assert ret.returncode != 0
        assert_pool_whole(steady)
    load.assert_served()
    record = last_release()
    assert record["result"] == "failed" and "release.drain" in record["reason"], record
    assert "gave back 1 old one(s)" in record["reason"], record["reason"]


@pytest.mark.parametrize(
    ("failpoint", "action"),
    [("release.canary-step", "consul-error"), ("docker.start", "docker-error")],
)
def test_docker_or_consul_error_during_a_canary_aborts_it(salt_cli, steady, failpoints, failpoint, action):
    failpoints({failpoint: {"action": action, "times": 1}})
    with LoadClient(max_seconds=120) as load:
        ret = salt_cli.run("state.apply", "cabify", pillar=canary_pillar(unique_version("f-canary-")))
        assert ret.returncode != 0, "a canary that met an error was promoted"
        assert_pool_whole(steady)
    load.assert_served()
    assert canary_state()["phase"] == "aborted"
    record = last_release()
    assert record["result"] == "failed" and f"failpoint {failpoint}" in record["reason"], record


def test_interrupted_abort_is_finished_by_the_heal(salt_call_cli, steady, failpoints):
    """The process that aborts a bad canary, a salt-call, dies half-way (the failpoint
    ends it like a kill -9) with the pool's lock: the beacon sees the orphan (a lock whose holder's
    process is gone from this host, long before its 30 s session expires) and the heal
    orchestration lets go of the lock, finishes the abort and marks the record
    interrupted."""
    failpoints({"release.abort": {"action": "exit"}})
    orphan = unique_version("f-orphan-")
    pillar = canary_pillar(orphan, {"FAULT": "http500"}, [{"weight": 20, "pause": 30}])
    with LoadClient(max_seconds=180) as load:
        ret = salt_call_cli.run("state.apply", "cabify", pillar=pillar)
        assert ret.returncode != 0
        assert orphan in versions_running(), "the abort ended before the canary went"
        wait_for(
            lambda: (
                last_release().get("result") == "interrupted"
                and pool_settled(3)
                and kv_get("cabify/weights/cabify") is None
            ),
            25,
            "the heal to finish the abort: canary gone, weights cleared, record interrupted",
        )
    load.assert_served()
    assert versions_running() == {steady: 3}
    record = last_release()
    assert record["to"] == orphan and "aborting" in record["reason"], record
    assert canary_state()["phase"] == "interrupted"


def test_release_that_lost_its_lock_stops_before_the_next_one_acts(salt_cli, salt_minion, steady):
    """Release A waits for its new replica; its lock session is destroyed in Consul and
    release B starts at once. A stops at its next step and says so; B acts only once A
    has stopped, and finishes."""
    version_a, version_b = unique_version("lock-a-"), unique_version("lock-b-")
    built = salt_cli.run(
        "cabify_docker.build_image", version_b, "/var/cache/cabify/app", "cabify-base:bookworm"
    )
    assert built.returncode == 0, built.stderr
    result: dict = {}
    thread_a = threading.Thread(
        target=lambda: result.update(a=release(salt_cli, version_a, min_healthy_time=20))
    )
    thread_a.start()
    holder = wait_for(lambda: kv_get("cabify/locks/cabify"), 30, "release A's lock")
    wait_for(lambda: versions_running().get(version_a), 30, "release A's first new replica")
    session = consul("GET", "/v1/kv/cabify/locks/cabify")[0]["Session"]
    assert consul("PUT", f"/v1/session/destroy/{session}") is True
    other_cli = salt_minion.salt_call_cli(timeout=300)
    ret_b = other_cli.run(
        "cabify_release.rolling", "cabify", version_b, replicas=3, min_healthy_time=0, drain_timeout=5
    )
    thread_a.join(timeout=300)
    assert ret_b.returncode == 0, ret_b.stderr[-2000:]
    assert result["a"].returncode != 0, "release A went on without its lock"
    a, b = kv_get(f"cabify/history/cabify/{holder['id']}"), ret_b.data
    assert a["result"] == "failed" and "lost its lock" in a["reason"], a
    assert b["result"] == "succeeded", b
    assert a["ended_at"] <= b["acting_at"], (
        f"B acted at {b['acting_at']} while A still did until {a['ended_at']}"
    )
    assert "lost its lock" in str(failed_states(result["a"].data))
    wait_for(
        lambda: versions_running() == {version_b: 3} and pool_settled(3), 30, f"{version_b} alone, settled"
    )
