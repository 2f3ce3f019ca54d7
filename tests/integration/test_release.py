"""Rolling releases through `state.apply cabify`: zero failed requests, automatic revert
of a release that does not become healthy, one release at a time, a dry run that
prints the plan."""

from __future__ import annotations

import base64
import json
import threading
import time

import pytest

from tests.helpers import CONSUL, consul, failed_states, http, wait_for
from tests.integration.test_pool import pool_settled, running_replicas
from tests.load import LoadClient

FAST = {"min_healthy_time": 1, "healthy_deadline": 15}


def versions_running() -> dict[str, int]:
    import docker  # noqa: PLC0415 - only these tests read labels

    found = docker.from_env().containers.list(filters={"label": "cabify.pool=cabify"})
    counts: dict[str, int] = {}
    for container in found:
        counts[container.labels["cabify.version"]] = counts.get(container.labels["cabify.version"], 0) + 1
    return counts


def release(salt_call_cli, version: str, replicas: int = 3, env: dict | None = None, **settings):
    pillar = {
        "cabify": {"version": version, "replicas": replicas, "env": env or {}, "release": FAST | settings}
    }
    # queue: a release that an event or the KV key started may still be finishing.
    return salt_call_cli.run("state.apply", "cabify", pillar=pillar, queue=True)


def last_release() -> dict:
    entries = consul("GET", "/v1/kv/cabify/history/cabify/?recurse=true")
    return max((json.loads(base64.b64decode(e["Value"])) for e in entries), key=lambda r: r["id"])


@pytest.fixture
def on_version_1(salt_call_cli, highstate):
    ret = release(salt_call_cli, "1")
    assert ret.returncode == 0, failed_states(ret.data)
    wait_for(lambda: pool_settled(3) and versions_running() == {"1": 3}, 60, "3 replicas of version 1")


def test_rolling_release_with_zero_failed_requests(salt_call_cli, on_version_1):
    with LoadClient(max_seconds=240) as load:
        ret = release(salt_call_cli, "2")
        assert ret.returncode == 0, failed_states(ret.data)
        wait_for(lambda: pool_settled(3), 30, "3 replicas registered and UP after the release")
        before_end = load.requests_so_far()
        wait_for(lambda: load.requests_so_far() > before_end + 50, 30, "50 more requests after the release")
    assert load.result.failed == 0, load.result.failures
    assert versions_running() == {"2": 3}
    assert set(load.result.versions) == {"1", "2"}
    record = last_release()
    assert record["result"] == "succeeded" and record["to"] == "2" and record["from"] == ["1"]


@pytest.mark.parametrize("fault", ["unhealthy", "crash"])
def test_failed_release_is_reverted(salt_call_cli, on_version_1, fault):
    before = running_replicas()
    with LoadClient(max_seconds=240) as load:
        ret = release(salt_call_cli, "3", env={"FAULT": fault, "CRASH_AFTER": "1"})
        assert ret.returncode != 0, "a release that never became healthy succeeded"
        wait_for(lambda: pool_settled(3), 30, "the pool back to 3 registered, UP replicas")
    assert load.result.failed == 0, load.result.failures
    assert versions_running() == {"1": 3}
    assert set(running_replicas()) == set(before), "version 1 replicas were replaced"
    record = last_release()
    assert record["result"] == "failed" and record["to"] == "3"
    assert "crashed" in record["reason"] if fault == "crash" else "not healthy" in record["reason"]


def test_second_release_at_once_is_refused(salt_call_cli, salt_minion, on_version_1):
    results = {}

    def slow_release():
        results["first"] = release(salt_call_cli, "4", min_healthy_time=8)

    first = threading.Thread(target=slow_release)
    first.start()
    wait_for(
        lambda: consul("GET", "/v1/kv/cabify/locks/cabify?raw=true") is not None,
        30,
        "the first release's lock",
    )
    # Salt itself runs one state.apply at a time per minion; the pool's lock is what
    # stops a second release from anywhere else (another minion, salt-call, a runner).
    other_cli = salt_minion.salt_call_cli(timeout=300)  # one CLI object runs one command at a time
    second = other_cli.run("cabify_release.rolling", "5", replicas=3)
    first.join(timeout=300)
    assert second.returncode != 0
    errors = str(second.data) + second.stderr + second.stdout
    assert "another release of pool cabify is running" in errors and "to version 4" in errors
    assert results["first"].returncode == 0, (
        failed_states(results["first"].data) or results["first"].stderr[-2000:]
    )
    assert versions_running() == {"4": 3}


def test_max_parallel_two_with_four_replicas_and_dry_run(salt_call_cli, on_version_1):
    release(salt_call_cli, "1", replicas=4)
    wait_for(lambda: pool_settled(4), 30, "4 replicas of version 1")
    before = running_replicas()
    pillar = {"cabify": {"version": "6", "replicas": 4, "release": FAST | {"max_parallel": 2}}}
    dry = salt_call_cli.run("state.apply", "cabify", test=True, pillar=pillar)
    plan = next(v for k, v in dry.data.items() if "pool-converged" in k)
    assert plan["result"] is None
    assert [b["start"] for b in plan["changes"]["release"]["batches"]] == [2, 2]
    assert running_replicas() == before, "test=True changed the pool"
    with LoadClient(max_seconds=240) as load:
        ret = release(salt_call_cli, "6", replicas=4, max_parallel=2)
        assert ret.returncode == 0, failed_states(ret.data)
    assert load.result.failed == 0, load.result.failures
    assert versions_running() == {"6": 4}
    release(salt_call_cli, "1")


def wait_release_end(version: str, timeout: float = 240) -> dict:
    """The record of the release to VERSION, once it has ended."""
    return wait_for(
        lambda: (r := last_release())["to"] == version and r["result"] != "running" and r,
        timeout,
        f"the end of the release to {version}",
    )


def _unique_version(prefix: str) -> str:
    return f"{prefix}{int(time.time()) % 1_000_000}"


def test_event_triggers_a_release(salt_call_cli, on_version_1):
    version = _unique_version("ev")
    ret = salt_call_cli.run("event.send", "cabify/release/request", data={"version": version})
    assert ret.returncode == 0, ret.stderr
    assert wait_release_end(version)["result"] == "succeeded"
    wait_for(lambda: versions_running() == {version: 3} and pool_settled(3), 30, f"{version} alone, settled")


def test_kv_desired_version_triggers_a_release(on_version_1):
    version = _unique_version("kv")
    status, _ = http("PUT", CONSUL + "/v1/kv/cabify/desired/version", version.encode())
    assert status == 200
    assert wait_release_end(version)["result"] == "succeeded"
    wait_for(lambda: versions_running() == {version: 3} and pool_settled(3), 30, f"{version} alone, settled")


def test_orchestration_fails_when_a_host_release_fails(salt_run_cli, on_version_1):
    pillar = {"cabify": {"version": "7", "env": {"FAULT": "unhealthy"}, "release": FAST}}
    ret = salt_run_cli.run("state.orchestrate", "orch.rolling", pillar=pillar)
    assert ret.returncode != 0, "orch.rolling reported success for a host whose release failed"
    assert versions_running() == {"1": 3}
    assert last_release()["result"] == "failed" and last_release()["to"] == "7"


def test_runners_show_status_and_history(salt_run_cli, on_version_1):
    history = salt_run_cli.run("cabify.history", limit=3)
    assert history.returncode == 0 and isinstance(history.data, list), history.stdout
    newest = history.data[0]
    assert newest["id"] == last_release()["id"] and newest["result"] in ("succeeded", "failed")
    assert newest["started"] <= newest["ended"], "start and end are the release's times"
    status = salt_run_cli.run("cabify.status")
    assert status.returncode == 0, status.stdout
    assert status.data["release_running"] is None
    assert status.data["instances"] == {"1": {"passing": 3}}
