"""The fleet, under load: converged from nothing by one orchestration, LBs that reach
every app host, images pulled by digest, and no failed request when the Consul leader
dies, when a host's dockerd restarts, or when a whole app host dies."""

from __future__ import annotations

import contextlib
import datetime
import logging
import subprocess
import time
import urllib.request
from collections import Counter

import pytest

from tests.fleet.conftest import (
    APP_HOSTS,
    FIGURES,
    LB_HOSTS,
    POOL_TOTAL,
    REGISTRY,
    SERVERS,
    STACK,
    address,
    consul_api,
    container,
    host_run,
    in_rotation,
    lb_health,
    out_of_rotation,
    pool_serves_everywhere,
    state_results,
    unclean_requests,
)
from tests.helpers import http, wait_for
from tests.load import LoadClient

log = logging.getLogger(__name__)

# What the issue asks of every check: 8 keep-alive connections with a 5 s timeout.
LOAD = {"port": 80, "workers": 8, "timeout": 5, "max_seconds": 600}
# A request caught on a host that died waits HAProxy's `timeout server` (3 s) before it
# is retried elsewhere: a client may wait that long, never its own 5 s.
MAX_IDLE = 4.5


@contextlib.contextmanager
def load_through(*lbs: str, keep_samples: bool = False):
    """A load of 8 keep-alive connections through each of LBS, checked when it ends:
    no failed request and no stall (KEEP_SAMPLES: each answer's time and version)."""
    clients = [LoadClient(host=address(lb), keep_samples=keep_samples, **LOAD) for lb in lbs]
    with contextlib.ExitStack() as stack:
        for client in clients:
            stack.enter_context(client)
        yield clients
    for client in clients:
        # Shown in the run's figures: how often a kept-alive connection closed under
        # a request (the client sent it again, tests/load.py), and when.
        if client.result.retried:
            FIGURES["requests sent again"] = FIGURES.get("requests sent again", 0) + client.result.retried
            log.info("through %s, sent again: %s", client.host, client.result.retries)
        client.assert_served(min_rate=20, max_idle=MAX_IDLE)
        strays = [i for i in client.result.instances if not i.startswith("cabify-")]
        assert not strays, f"requests for pool cabify were answered by {strays}"


def served_more(clients: list[LoadClient], count: int = 50) -> None:
    """Wait until every client has had COUNT more requests answered: the load spans
    what comes next (a failure in it would show)."""
    marks = [c.requests_so_far() + count for c in clients]
    wait_for(
        lambda: all(c.requests_so_far() >= m for c, m in zip(clients, marks, strict=True)),
        30,
        f"{count} more requests through each LB",
    )


def requests_through(lb: str, count: int):
    """COUNT requests through LB by 8 keep-alive clients, checked like any load; their
    result (instances answering, by name)."""
    client = LoadClient(host=address(lb), max_requests=count, **LOAD)
    with client:
        wait_for(lambda: client.requests_so_far() >= count, 60, f"{count} requests through {lb}")
    client.assert_served(min_rate=20, max_idle=MAX_IDLE)
    return client.result


def replicas_by_host(fleet_cli) -> dict[str, str]:
    """Each running replica of cabify (container name) -> the app host it runs on."""
    found = fleet_cli.run(APP_HOSTS, "cabify_docker.replicas", "cabify", all=False)
    return {r["name"]: host for host, replicas in found.items() for r in replicas}


def orch_steps(ret) -> dict:
    """orch.fleet's steps (ID -> result) from a salt-run return."""
    assert ret.returncode == 0, f"orch.fleet failed: {str(ret.data)[-3000:]} {ret.stderr[-2000:]}"
    return next(iter(ret.data["data"].values()))


def test_the_fleet_converges_from_nothing_and_again_changes_nothing(fleet, salt_master):
    """orch.fleet from nothing (the fixture), then again, as `make fleet` does: every
    host's highstate, the build host's push and the Consul steps change nothing."""
    steps = orch_steps(fleet["orch"])
    assert all(step["result"] for step in steps.values()), {k: s["comment"] for k, s in steps.items()}
    with load_through(LB_HOSTS[0]):
        started = time.monotonic()
        again = orch_steps(salt_master.salt_run_cli(timeout=1200).run("state.orchestrate", "orch.fleet"))
        FIGURES["orch.fleet again"] = time.monotonic() - started
    assert all(step["result"] for step in again.values()), {k: s["comment"] for k, s in again.items()}
    changed = {
        step_id: {host: sorted(k for k, v in got.items() if v.get("changes")) for host, got in ret.items()}
        for step_id, step in again.items()
        if (ret := (step.get("changes") or {}).get("ret"))
    }
    assert not changed, f"orch.fleet again changed: {changed}"


def test_requests_through_each_lb_reach_replicas_on_every_app_host(fleet, fleet_cli):
    where = replicas_by_host(fleet_cli)
    assert len(where) == POOL_TOTAL, where
    for lb in LB_HOSTS:
        result = requests_through(lb, 300)
        hosts = Counter(where.get(instance, "?") for instance in result.instances.elements())
        assert set(hosts) == set(APP_HOSTS), f"requests through {lb} reached {dict(hosts)}"


def test_every_app_host_runs_the_image_the_registry_holds_by_digest(fleet, fleet_cli):
    version = "1"
    status, _ = http("GET", "http://127.0.0.1:5000/v2/")
    assert status == 200, "the registry on the machine does not answer"
    # What the build host pushed, as the registry gives it (a HEAD of the tag's manifest).
    request = urllib.request.Request(
        f"http://127.0.0.1:5000/v2/cabify-app/manifests/{version}",
        method="HEAD",
        headers={"Accept": "application/vnd.docker.distribution.manifest.v2+json"},
    )
    with urllib.request.urlopen(request, timeout=5) as answer:  # noqa: S310 - loopback
        pushed = answer.headers["Docker-Content-Digest"]
    digests = fleet_cli.run(APP_HOSTS, "cabify_docker.local_digests", version, REGISTRY)
    assert digests == {host: [pushed] for host in APP_HOSTS}, f"pushed {pushed}, app hosts run {digests}"
    ids = fleet_cli.run(APP_HOSTS, "cmd.run", "docker image inspect -f '{{.Id}}' cabify-app:1")
    assert len(set(ids.values())) == 1 and next(iter(ids.values())).startswith("sha256:"), ids


def test_a_canary_gets_the_same_share_through_either_lb(fleet, fleet_cli):
    """Both LBs weigh servers by the same SRV records: one canary beside the pool's
    replicas, all at weight 1, gets 1 request in POOL_TOTAL + 1 through each LB."""
    host = APP_HOSTS[0]
    canary = fleet_cli.run(host, "cabify_pool.start", "cabify", "1", role="canary")[host]
    assert isinstance(canary, dict) and canary.get("name"), f"no canary started on {host}: {canary}"
    try:
        where = f"{canary['address']}:{canary['port']}"
        wait_for(
            lambda: all(where in in_rotation(lb) for lb in LB_HOSTS), 30, f"the canary {where} UP in both LBs"
        )
        expected = 1 / (POOL_TOTAL + 1)
        for lb in LB_HOSTS:
            result = requests_through(lb, 1000)
            share = result.instances[canary["name"]] / result.requests
            assert abs(share - expected) <= 0.02, f"{lb}: the canary got {share:.1%}, not {expected:.1%}"
    finally:
        with load_through(*LB_HOSTS) as clients:
            removed = fleet_cli.run(host, "cabify_pool.remove_role", "cabify", "canary")[host]
            served_more(clients)
    assert removed == [canary["name"]], f"removing the canary on {host}: {removed}"


def test_cabify_status_on_the_master_shows_what_each_app_host_runs(fleet, salt_run_cli):
    ret = salt_run_cli.run("cabify.status", "cabify")
    assert ret.returncode == 0, ret.stderr
    per_host = STACK["cabify"]["pools"]["cabify"]["replicas"]
    want = {"1": {"running": per_host, "passing": per_host}}
    shown = {h: ret.data["hosts"].get(h) for h in APP_HOSTS}
    assert shown == dict.fromkeys(APP_HOSTS, want), ret.data["hosts"]


def leader() -> str:
    """The address:port of the Consul leader, as a server that is up sees it."""
    for server in SERVERS:
        with contextlib.suppress(Exception):
            found = consul_api(server, "/v1/status/leader")
            if found:
                return found
    return ""


def leadership_taken(server: str, since: float) -> float:
    """Seconds from SINCE (a wall-clock time) to the first time SERVER's Consul agent
    logged that it took the cluster's leadership after it."""
    lines = host_run(server, "sh", "-c", "grep -h 'entering leader state' /var/log/consul/*.log", check=False)
    times = [
        datetime.datetime.strptime(line.split()[0], "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()
        for line in lines.splitlines()
        if line.strip()
    ]
    after = [t for t in times if t >= since]
    assert after, f"{server} is the leader but logged no leadership since the kill: {lines[-500:]!r}"
    return min(after) - since


def test_killing_the_consul_leader_costs_no_request_and_a_new_one_is_elected_within_5s(fleet, fleet_cli):
    old = wait_for(leader, 30, "a Consul leader")
    victim = next(h for h in SERVERS if address(h) == old.split(":")[0])
    others = [h for h in SERVERS if h != victim]
    try:
        with load_through(*LB_HOSTS) as clients:
            served_more(clients)
            host_run(victim, "pkill", "-9", "-x", "consul")
            killed = time.time()

            def new_leader() -> str:
                for server in others:
                    found = consul_api(server, "/v1/status/leader")
                    if found and found != old:
                        return found
                return ""

            elected = wait_for(new_leader, 30, f"a new Consul leader after {victim}'s was killed")
            # When, by the new leader's own log (polling through `docker exec` would add
            # up to a second of its own).
            seconds = leadership_taken(next(h for h in others if address(h) == elected.split(":")[0]), killed)
            # The victim's agent is seen failed: its replicas leave DNS, then the LBs.
            wait_for(
                lambda: out_of_rotation(victim), 30, f"{victim}'s replicas out of rotation, its agent down"
            )
            served_more(clients)
    finally:
        failed, _ = state_results(fleet_cli.run(victim, "state.apply", "consul"))
        assert not failed, f"{victim}: consul did not start again: {failed}"
    FIGURES["new Consul leader"] = seconds
    assert seconds <= 5, f"the new leader {elected} was elected {seconds:.1f}s after the kill"
    wait_for(pool_serves_everywhere, 60, f"every replica back in both LBs once {victim}'s agent runs again")


def test_a_dockerd_restart_with_live_restore_keeps_the_replicas_serving(fleet, fleet_cli):
    host = APP_HOSTS[1]
    before = host_run(host, "docker", "ps", "-q", "--no-trunc", "--filter", "label=cabify.pool").split()
    with load_through(*LB_HOSTS) as clients:
        served_more(clients)
        host_run(host, "/etc/init.d/docker", "restart", timeout=120)
        wait_for(lambda: host_run(host, "docker", "info", "-f", "{{.ID}}", check=False).strip(), 60, host)
        restarted = time.monotonic()
        # Right after the restart a replica of this host was once (1 run in 7) not UP in
        # an LB (no request failed: the LBs retry elsewhere); likely dockerd writing its
        # iptables rules again as it starts. They must all be back, under the same load.
        wait_for(pool_serves_everywhere, 30, f"{host}'s replicas back in both LBs after dockerd restarted")
        back = time.monotonic() - restarted
        served_more(clients)
    after = host_run(host, "docker", "ps", "-q", "--no-trunc", "--filter", "label=cabify.pool").split()
    assert sorted(after) == sorted(before), "the replicas were not the same containers after the restart"
    FIGURES["replicas back after a dockerd restart"] = back


def test_a_dead_app_host_costs_no_request_and_leaves_both_lbs_within_3s(fleet, fleet_cli):
    victim = APP_HOSTS[-1]
    gone = address(victim)
    try:
        health = {lb: lb_health(lb) for lb in LB_HOSTS}
        with load_through(*LB_HOSTS) as clients:
            served_more(clients)
            subprocess.run(["docker", "kill", container(victim)], check=True, capture_output=True)
            killed = time.monotonic()
            wait_for(
                lambda: out_of_rotation(victim),
                30,
                f"{victim}'s replicas out of both LBs' rotation",
                interval=0.05,
            )
            out_after = time.monotonic() - killed
            served_more(clients)
            # Shown if a request failed (it did, 1 in 1 500, in 2 of 3 runs): how each
            # LB ended the requests that did not end cleanly around the death.
            for lb in LB_HOSTS:
                log.info("%s: requests that did not end cleanly: %s", lb, unclean_requests(lb)[-30:])
                log.info("%s: HAProxy before the load %s, after the death %s", lb, health[lb], lb_health(lb))

        def out_of_catalog() -> bool:
            instances = consul_api(APP_HOSTS[0], "/v1/catalog/service/cabify")
            return not any(i["ServiceAddress"] == gone for i in instances)

        wait_for(out_of_catalog, 45, f"{victim}'s instances out of Consul's catalog")
        catalog_after = time.monotonic() - killed
    finally:
        subprocess.run(["docker", "start", container(victim)], check=True, capture_output=True)
        wait_for(
            lambda: fleet_cli.run(victim, "test.ping", timeout=5).get(victim), 60, f"{victim}'s minion back"
        )
        failed, _ = state_results(fleet_cli.run(victim, "state.apply"))
        assert not failed, f"{victim} did not converge again: {failed}"
    FIGURES.update({"dead host out of both LBs": out_after, "dead host out of the catalog": catalog_after})
    assert out_after <= 3, f"{victim}'s replicas left both LBs {out_after:.1f}s after it died"
    assert catalog_after <= 30, f"{victim}'s instances left the catalog {catalog_after:.1f}s after it died"
    wait_for(pool_serves_everywhere, 90, f"{victim} back in both LBs")


@pytest.fixture(autouse=True)
def _fleet_whole(fleet):
    """Each test starts from a fleet that serves on every host."""
    wait_for(pool_serves_everywhere, 90, f"both LBs with {POOL_TOTAL} replicas UP on every app host")
