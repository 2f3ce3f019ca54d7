"""The Cabify App as pools of replicas: served through HAProxy, registered in Consul,
scaled and healed with no failed request; a second pool beside the first, on its own."""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.helpers import (
    CONSUL,
    PORTS,
    consul,
    frontend,
    haproxy_servers,
    http,
    is_up,
    pool_settled,
    pool_state,
    registered,
    running_replicas,
    versions_running,
    wait_for,
)
from tests.integration.conftest import QUICK_RELEASE, converge_pool
from tests.load import LoadClient

# A registration as the pool makes them, whose container is gone (port 9: discard).
STALE = {
    "Name": "cabify",
    "Address": "127.0.0.1",
    "Port": 9,
    "Meta": {"pool": "cabify", "version": "1", "role": "stable"},
}


def test_requests_reach_every_replica(pool_of_three):
    answers = [http("GET", frontend("cabify") + "/") for _ in range(60)]
    assert [status for status, _ in answers] == [200] * 60
    assert {json.loads(body)["instance"] for _, body in answers} == set(running_replicas())


def test_replicas_registered_with_version_role_and_check(pool_of_three):
    services = consul("GET", "/v1/agent/services")
    checks = consul("GET", "/v1/agent/checks")
    for name, address in running_replicas().items():
        service = services[name]
        assert service["Service"] == "cabify" and service["Address"] == address and service["Port"] == 8080
        assert service["Meta"] == {"pool": "cabify", "version": "1", "role": "stable"}
        assert "stable" in service["Tags"]
        check = next(c for c in checks.values() if c["ServiceID"] == name)
        assert check["Status"] == "passing"


def test_second_apply_is_a_no_op_and_dry_run_predicts_it(salt_cli, pool_of_three):
    before = running_replicas()
    ret = converge_pool(salt_cli)
    assert {k: v["changes"] for k, v in ret.data.items() if v["changes"]} == {}

    pillar = {"cabify": {"pools": {"cabify": {"replicas": 2}}}}
    dry = salt_cli.run("state.apply", "cabify", test=True, pillar=pillar)
    predicted = pool_state(dry.data)
    assert predicted["result"] is None
    assert running_replicas() == before, "test=True changed the pool"

    real = pool_state(converge_pool(salt_cli, replicas=2).data)
    assert predicted["changes"]["start"] == len(real["changes"].get("started", [])) == 0
    assert predicted["changes"]["remove"] == real["changes"]["removed"]
    assert len(predicted["changes"]["remove"]) == 1 and set(running_replicas()) < set(before)


def test_scale_up_and_down_under_load(salt_cli, pool_of_three):
    with LoadClient(max_seconds=240) as load:
        converge_pool(salt_cli, replicas=5)
        converge_pool(salt_cli, replicas=3)
    load.assert_served()


def test_killed_replicas_cost_no_request(pool_of_three):
    """10 `docker kill`s in a row, each healed (beacon, reactor, orch.heal) before the
    next, under 8 keep-alive clients that give up on a request after 5 s."""
    with LoadClient(workers=8, timeout=5, max_seconds=300) as load:
        for kill in range(10):
            victim = sorted(running_replicas())[kill % 3]
            subprocess.run(["docker", "kill", victim], check=True, capture_output=True)
            wait_for(
                lambda victim=victim: victim not in running_replicas() and pool_settled(3),
                30,
                f"kill {kill + 1}: {victim} replaced, 3 replicas running, registered and UP",
            )
    load.assert_served()


def test_reconcile_fixes_stale_and_missing_registrations(salt_cli, pool_of_three, heal_held_off):
    missing = sorted(running_replicas())[0]
    consul("PUT", f"/v1/agent/service/deregister/{missing}")
    consul("PUT", "/v1/agent/service/register", STALE | {"ID": "cabify-1-gone00"})
    ret = salt_cli.run("cabify_pool.reconcile", "cabify")
    assert ret.returncode == 0, ret.stderr
    assert ret.data == {"deregistered": ["cabify-1-gone00"], "registered": [missing]}
    assert registered() == running_replicas()


def test_reconcile_removes_an_instance_only_the_catalog_still_holds(salt_cli, pool_of_three, heal_held_off):
    """An instance of the pool on this node that the agent no longer knows stays in the
    catalog, passing in DNS, when the agent may not remove it (the token it was
    registered with was pruned before the agent synced its deregistration: the agent
    then tries the anonymous token). Reconcile removes it with the host's token."""
    node = consul("GET", "/v1/agent/self")["Config"]["NodeName"]
    orphan = "cabify-1-orphan0"
    consul(
        "PUT",
        "/v1/catalog/register",
        {
            "Node": node,
            "Address": "127.0.0.1",
            "SkipNodeUpdate": True,
            "Service": {
                "ID": orphan,
                "Service": "cabify",
                "Address": "192.0.2.1",
                "Port": 8080,
                "Tags": ["stable", "v1"],
                "Meta": {"pool": "cabify"},
            },
            "Check": {
                "CheckID": f"service:{orphan}",
                "Name": orphan,
                "Status": "passing",
                "ServiceID": orphan,
            },
        },
    )
    try:
        ret = salt_cli.run("cabify_pool.reconcile", "cabify")
        assert ret.returncode == 0, ret.stderr
        assert ret.data.get("catalog_orphans_removed") == [orphan], ret.data
        assert orphan not in {e["ServiceID"] for e in consul("GET", "/v1/catalog/service/cabify")}
        assert registered() == running_replicas()
    finally:
        http("PUT", f"{CONSUL}/v1/catalog/deregister", {"Node": node, "ServiceID": orphan})


def test_beacon_and_reactor_fix_stale_and_missing_registrations(pool_of_three):
    missing = sorted(running_replicas())[-1]
    consul("PUT", f"/v1/agent/service/deregister/{missing}")
    consul("PUT", "/v1/agent/service/register", STALE | {"ID": "cabify-1-gone01"})
    wait_for(lambda: pool_settled(3), 30, "the beacon/reactor to re-register and forget the stale entry")


@pytest.fixture
def heal_held_off():
    """The pool's host lock held by the test: a heal (which takes it) waits until the
    test ends, so that only the call under test fixes what the test broke."""
    import fcntl  # noqa: PLC0415
    import os  # noqa: PLC0415

    os.makedirs("/run/cabify", exist_ok=True)
    with open("/run/cabify/cabify.lock", "w", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def test_second_pool_is_scaled_released_and_healed_on_its_own(salt_cli, pool_of_three):
    """Pool shop (its own service, backend, frontend and network) beside cabify: each
    change of shop leaves every replica of cabify as it was, and the reverse."""
    converge_pool(salt_cli, "shop", replicas=2)
    cabify_before = running_replicas("cabify")
    with (
        LoadClient(port=PORTS["shop"], max_seconds=240) as shop_load,
        LoadClient(port=PORTS["cabify"], max_seconds=240) as cabify_load,
    ):
        converge_pool(salt_cli, "shop", version="2", replicas=3, release=QUICK_RELEASE)  # scaled, released
        victim = sorted(running_replicas("shop"))[0]
        subprocess.run(["docker", "kill", victim], check=True, capture_output=True)
        wait_for(
            lambda: victim not in running_replicas("shop") and pool_settled(3, "shop"),
            30,
            f"shop's {victim} healed",
        )
        assert running_replicas("cabify") == cabify_before, "a change of pool shop touched pool cabify"
        shop_before = running_replicas("shop")
        converge_pool(salt_cli, "cabify", replicas=4, others={"shop": {"version": "2", "replicas": 3}})
        assert running_replicas("shop") == shop_before, "a change of pool cabify touched pool shop"
    shop_load.assert_served()
    cabify_load.assert_served()
    assert set(shop_load.result.versions) == {"1", "2"} and set(cabify_load.result.versions) == {"1"}
    assert versions_running("shop") == {"2": 3}
    services = consul("GET", "/v1/agent/services")
    assert {services[name]["Service"] for name in running_replicas("shop")} == {"shop"}
    assert len([s for s in haproxy_servers("shop") if is_up(s["status"])]) == 3
    converge_pool(salt_cli, "shop", version="1", replicas=2, release=QUICK_RELEASE)
