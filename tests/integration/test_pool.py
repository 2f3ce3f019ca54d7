"""The Cabify App as a pool of replicas: served through HAProxy, registered in Consul,
scaled and healed with no failed request."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess

import docker
import pytest

from tests.helpers import FRONTEND, consul, failed_states, haproxy_servers, http, wait_for
from tests.load import LoadClient

# A registration as the pool makes them, whose container is gone (port 9: discard).
STALE = {
    "Name": "cabify",
    "Address": "127.0.0.1",
    "Port": 9,
    "Meta": {"pool": "cabify", "version": "1", "role": "stable"},
}


def running_replicas() -> dict[str, str]:
    """name -> address of the pool's running containers, straight from dockerd."""
    found = docker.from_env().containers.list(filters={"label": "cabify.pool=cabify"})
    return {c.name: next(iter(c.attrs["NetworkSettings"]["Networks"].values()))["IPAddress"] for c in found}


def registered() -> dict[str, str]:
    """The pool's own instances in Consul (meta pool=cabify), by ID."""
    services = consul("GET", "/v1/agent/services")
    return {sid: s["Address"] for sid, s in services.items() if (s.get("Meta") or {}).get("pool") == "cabify"}


def haproxy_up_addresses() -> set[str]:
    return {s["addr"].rsplit(":", 1)[0] for s in haproxy_servers() if s["status"] == "UP"}


def pool_settled(count: int) -> bool:
    running = running_replicas()
    return (
        len(running) == count and registered() == running and haproxy_up_addresses() == set(running.values())
    )


def apply_cabify(salt_call_cli, **pillar):
    ret = salt_call_cli.run("state.apply", "cabify", pillar={"cabify": pillar} if pillar else None)
    assert ret.returncode == 0 and not failed_states(ret.data), failed_states(ret.data) or ret.stderr
    return ret


@pytest.fixture
def pool_of_three(salt_call_cli, highstate):
    apply_cabify(salt_call_cli)
    wait_for(lambda: pool_settled(3), 30, "3 replicas running, registered and UP in HAProxy")
    return running_replicas()


def test_requests_reach_every_replica(pool_of_three):
    answers = [http("GET", FRONTEND + "/") for _ in range(60)]
    assert [status for status, _ in answers] == [200] * 60
    assert {json.loads(body)["instance"] for _, body in answers} == set(pool_of_three)


def test_replicas_registered_with_version_role_and_check(pool_of_three):
    services = consul("GET", "/v1/agent/services")
    checks = consul("GET", "/v1/agent/checks")
    for name, address in pool_of_three.items():
        service = services[name]
        assert service["Address"] == address and service["Port"] == 8080
        assert service["Meta"] == {"pool": "cabify", "version": "1", "role": "stable"}
        assert "stable" in service["Tags"]
        check = next(c for c in checks.values() if c["ServiceID"] == name)
        assert check["Status"] == "passing"


def test_second_apply_is_a_no_op_and_dry_run_predicts_it(salt_call_cli, pool_of_three):
    ret = apply_cabify(salt_call_cli)
    assert {k: v["changes"] for k, v in ret.data.items() if v["changes"]} == {}

    dry = salt_call_cli.run("state.apply", "cabify", test=True, pillar={"cabify": {"replicas": 2}})
    predicted = next(v for k, v in dry.data.items() if "pool-converged" in k)
    assert predicted["result"] is None
    assert running_replicas() == pool_of_three, "test=True changed the pool"

    real = next(v for k, v in apply_cabify(salt_call_cli, replicas=2).data.items() if "pool-converged" in k)
    assert predicted["changes"]["start"] == len(real["changes"].get("started", [])) == 0
    assert predicted["changes"]["remove"] == real["changes"]["removed"]
    assert len(predicted["changes"]["remove"]) == 1 and set(running_replicas()) < set(pool_of_three)


def test_scale_up_and_down_under_load(salt_call_cli, pool_of_three):
    with LoadClient(max_seconds=240) as load:
        apply_cabify(salt_call_cli, replicas=5)
        wait_for(lambda: pool_settled(5), 30, "5 replicas running, registered and UP")
        apply_cabify(salt_call_cli, replicas=3)
        wait_for(lambda: pool_settled(3), 30, "3 replicas running, registered and UP")
    assert load.result.requests > 100, "the load client hardly ran"
    assert load.result.failed == 0, load.result.failures


def test_killed_replica_is_replaced_under_load(salt_call_cli, pool_of_three):
    victim = sorted(pool_of_three)[0]
    with LoadClient(max_seconds=120) as load:
        subprocess.run(["docker", "kill", victim], check=True, capture_output=True)
        wait_for(
            lambda: victim not in running_replicas() and pool_settled(3),
            15,
            f"{victim} replaced: 3 replicas running, registered and UP",
        )
    assert load.result.failed == 0, load.result.failures


@pytest.fixture
def heal_held_off():
    """The pool's host lock held by the test: a heal (which takes it) waits until the
    test ends, so that only the call under test fixes what the test broke."""
    os.makedirs("/run/cabify", exist_ok=True)
    with open("/run/cabify/cabify.lock", "w", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def test_reconcile_fixes_stale_and_missing_registrations(salt_call_cli, pool_of_three, heal_held_off):
    missing = sorted(pool_of_three)[0]
    consul("PUT", f"/v1/agent/service/deregister/{missing}")
    consul(
        "PUT",
        "/v1/agent/service/register",
        STALE | {"ID": "cabify-1-gone00"},
    )
    ret = salt_call_cli.run("cabify.reconcile")
    assert ret.returncode == 0
    assert ret.data == {"deregistered": ["cabify-1-gone00"], "registered": [missing]}
    assert registered() == running_replicas()


def test_beacon_and_reactor_fix_stale_and_missing_registrations(pool_of_three):
    missing = sorted(pool_of_three)[-1]
    consul("PUT", f"/v1/agent/service/deregister/{missing}")
    consul(
        "PUT",
        "/v1/agent/service/register",
        STALE | {"ID": "cabify-1-gone01"},
    )
    wait_for(lambda: pool_settled(3), 30, "the beacon/reactor to re-register and forget the stale entry")
