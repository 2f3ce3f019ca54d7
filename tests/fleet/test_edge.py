"""The fleet's edge without a single point of failure, under load: the LB pair's
virtual address (keepalived) moves within 3 s when its holder dies or its HAProxy
stops, and does not flap back when that LB returns; an LB serves through a Consul
outage of its own agent, reloaded and restarted meanwhile; and each host's firewall
opens exactly what its roles serve, to exactly whom, probed from the other hosts, the
master and a stranger on the fleet's network."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import time

import pytest

from tests.fleet.conftest import (
    APP_HOSTS,
    FIGURES,
    LB_HOSTS,
    SERVERS,
    TOPOLOGY,
    address,
    container,
    host_run,
    in_rotation,
    pool_serves_everywhere,
    state_results,
)
from tests.fleet.test_fleet import LOAD, load_through, served_more
from tests.helpers import PORT_PROBE, http, wait_for
from tests.load import LoadClient

log = logging.getLogger(__name__)
VIP = TOPOLOGY["vip"].split("/")[0]
OUTAGE = float(os.environ.get("CABIFY_CONSUL_OUTAGE_SECONDS", "300"))
# Where a stranger stands: on the fleet's network, but no host of it.
STRANGER = "10.213.0.250"
STRANGER_RUN = [
    *("docker", "run", "--rm", "--network", TOPOLOGY["network"]["name"]),
    *("--ip", STRANGER, "cabify-base:bookworm"),
]


def vip_holders() -> list[str]:
    """The LBs that hold the virtual address now (one, unless something is wrong)."""
    return [
        lb
        for lb in LB_HOSTS
        if f" {VIP}/" in host_run(lb, "ip", "-4", "-o", "addr", "show", "dev", "eth0", check=False)
    ]


def other(lb: str) -> str:
    return next(h for h in LB_HOSTS if h != lb)


@contextlib.contextmanager
def load_on_vip():
    """8 keep-alive clients on the virtual address, 5 s timeout, checked by the test."""
    client = LoadClient(host=VIP, **LOAD)
    with client:
        yield client
    assert not client.result.crashed, client.result.crashed


def assert_only_in_flight_failed(client: LoadClient, what: str) -> int:
    """At most one failed request a client (what it had in flight on the LB that went),
    and requests flowed: the failures, for the figures."""
    result = client.result
    log.info(
        "%s: %d failed %s, %d sent again %s",
        what,
        result.failed,
        result.failures,
        result.retried,
        result.retries,
    )
    assert result.failed <= client.workers, (
        f"{what}: {result.failed} failed requests for {client.workers} clients: {result.failures}"
    )
    assert result.rate >= 20, f"{what}: requests did not flow ({result.requests} in {result.seconds:.0f}s)"
    return result.failed


def moved_to(survivor: str, since: float, what: str) -> float:
    """Seconds from SINCE (monotonic) until SURVIVOR holds the virtual address alone."""
    wait_for(
        lambda: vip_holders() == [survivor], 10, f"the virtual address on {survivor} {what}", interval=0.05
    )
    return time.monotonic() - since


def holds_steadily(holder: str, seconds: float) -> None:
    """HOLDER alone holds the virtual address for SECONDS (no flapping)."""
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        holders = vip_holders()
        assert holders == [holder], f"the virtual address moved while the other LB came back: {holders}"


def test_the_virtual_address_moves_within_3s_when_its_lb_dies_and_stays_when_it_returns(fleet, fleet_cli):
    holder = wait_for(lambda: (h := vip_holders()) and len(h) == 1 and h[0], 30, "one LB holding the VIP")
    survivor = other(holder)
    try:
        with load_on_vip() as client:
            served_more([client])
            subprocess.run(["docker", "kill", container(holder)], check=True, capture_output=True)
            killed = time.monotonic()
            moved = moved_to(survivor, killed, f"after {holder} died")
            served_more([client], 200)
        failed = assert_only_in_flight_failed(client, f"{holder} killed")
        # New connections succeed on the address.
        assert http("GET", f"http://{VIP}/", timeout=5)[0] == 200
    finally:
        subprocess.run(["docker", "start", container(holder)], check=True, capture_output=True)
        wait_for(
            lambda: fleet_cli.run(holder, "test.ping", timeout=5).get(holder), 60, f"{holder}'s minion back"
        )
    with load_through(survivor):
        failed_states, _ = state_results(fleet_cli.run(holder, "state.apply"))
        assert not failed_states, f"{holder} did not converge again: {failed_states}"
        holds_steadily(survivor, 10)
    FIGURES.update({"VIP moved after its LB died": moved, "requests failed as the VIP moved": failed})
    assert moved <= 3, f"the virtual address reached {survivor} {moved:.1f}s after {holder} died"
    wait_for(pool_serves_everywhere, 60, f"{holder} serving every replica again")


def test_the_virtual_address_moves_within_3s_when_its_haproxy_stops_and_stays_when_it_starts(
    fleet, fleet_cli
):
    holder = wait_for(lambda: (h := vip_holders()) and len(h) == 1 and h[0], 30, "one LB holding the VIP")
    survivor = other(holder)
    try:
        with load_on_vip() as client:
            served_more([client])
            host_run(holder, "/etc/init.d/haproxy", "stop")
            stopped = time.monotonic()
            moved = moved_to(survivor, stopped, f"after {holder}'s HAProxy stopped")
            served_more([client], 200)
        failed = assert_only_in_flight_failed(client, f"{holder}'s HAProxy stopped")
    finally:
        with load_through(survivor):
            failed_states, _ = state_results(fleet_cli.run(holder, "state.apply", "haproxy"))
            assert not failed_states, f"{holder}: HAProxy did not start again: {failed_states}"
            holds_steadily(survivor, 10)
    FIGURES.update({"VIP moved after HAProxy stopped": moved, "requests failed as HAProxy stopped": failed})
    assert moved <= 3, f"the virtual address reached {survivor} {moved:.1f}s after {holder}'s HAProxy stopped"


# --- an LB through a Consul outage ----------------------------------------------------


def state_to_load(lb: str) -> set[str]:
    """The addresses in the server state a new HAProxy on LB loads (none while Consul
    answers there)."""
    text = host_run(lb, "cat", "/var/lib/haproxy/server-state", check=False)
    rows = [line.split() for line in text.splitlines()[1:] if line and not line.startswith("#")]
    return {r[4] for r in rows if len(r) > 4 and r[4] not in ("-", "0.0.0.0")}  # noqa: S104


def twenty_answers(lb: str) -> list[int]:
    statuses = []
    for _ in range(20):
        try:
            statuses.append(http("GET", f"http://{address(lb)}/", timeout=5)[0])
        except OSError:
            statuses.append(0)
    return statuses


def test_an_lb_serves_through_a_consul_outage_reloaded_and_restarted(fleet, fleet_cli):
    """The LB's own Consul agent (its DNS) is down for OUTAGE seconds; its HAProxy is
    reloaded under load, then restarted, and serves every replica it last knew; once
    the agent is back, a pool change reaches it again."""
    lb = LB_HOSTS[-1]
    known = in_rotation(lb)
    try:
        with load_through(lb) as clients:
            host_run(lb, "/etc/init.d/consul", "stop")
            since = time.monotonic()
            wait_for(
                lambda: {a.split(":")[0] for a in known} <= state_to_load(lb),
                30,
                f"{lb}'s server state to load listing every replica it serves",
            )
            wait_for(lambda: time.monotonic() - since > 35, 40, "the outage past HAProxy's former 30 s hold")
            host_run(lb, "/etc/init.d/haproxy", "reload")
            served_more(clients, 200)
            assert in_rotation(lb) == known, "the reloaded HAProxy lost servers during the outage"
        # A restart closes every connection: the load stops first.
        host_run(lb, "/etc/init.d/haproxy", "restart")
        statuses = wait_for(
            lambda: (s := twenty_answers(lb)) and all(c == 200 for c in s) and s,
            30,
            f"20 of 20 answers from {lb}'s HAProxy, restarted while its Consul agent is down",
        )
        assert statuses == [200] * 20
        wait_for(lambda: in_rotation(lb) == known, 30, f"{lb} restarted, serving every replica it knew")
        with load_through(lb) as clients:
            wait_for(
                lambda: time.monotonic() - since >= OUTAGE,
                OUTAGE + 10,
                f"the end of the {OUTAGE:.0f}s outage",
            )
            served_more(clients)
    finally:
        failed_states, _ = state_results(fleet_cli.run(lb, "state.apply", "consul"))
        assert not failed_states, f"{lb}: Consul did not start again: {failed_states}"
    # The HAProxy that started from saved servers is reloaded from DNS alone.
    wait_for(lambda: not state_to_load(lb), 30, f"{lb}'s server state to load emptied once Consul answers")
    wait_for(lambda: in_rotation(lb) == known, 30, f"{lb} serving exactly the replicas it knew")
    # Changes flow again: a canary replica started on an app host reaches the LB.
    host = APP_HOSTS[0]
    canary = fleet_cli.run(host, "cabify_pool.start", "cabify", "1", role="canary")[host]
    assert isinstance(canary, dict) and canary.get("name"), f"no canary started on {host}: {canary}"
    try:
        where = f"{canary['address']}:{canary['port']}"
        started = time.monotonic()
        wait_for(
            lambda: where in in_rotation(lb), 30, f"the new replica {where} UP in {lb} once Consul is back"
        )
        FIGURES["a change reached the LB once Consul was back"] = time.monotonic() - started
    finally:
        with load_through(*LB_HOSTS) as clients:
            fleet_cli.run(host, "cabify_pool.remove_role", "cabify", "canary")
            served_more(clients)


# --- firewall -------------------------------------------------------------------------


def probe_from(where: str, targets: list[str]) -> dict[str, str]:
    """Each host:port of TARGETS as seen from WHERE (a fleet host, `master`: the
    machine, `stranger`: a container on the fleet's network that is no host of it):
    open, refused (reached, nothing listens) or filtered (no answer)."""
    if where == "master":
        out = subprocess.run(
            ["python3", "-c", PORT_PROBE, *targets], capture_output=True, text=True, check=True
        ).stdout
    elif where == "stranger":
        out = subprocess.run(
            [*STRANGER_RUN, "python3", "-c", PORT_PROBE, *targets],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    else:
        out = host_run(where, "python3", "-c", PORT_PROBE, *targets, timeout=60)
    return json.loads(out)


def reachable(state: str) -> bool:
    return state != "filtered"


def salt_connection(host: str) -> str:
    """HOST's minion's established connection to the master's publish port."""
    out = host_run(
        host, "ss", "-Htn", "state", "established", "dst", f"{TOPOLOGY['network']['gateway']}:4505"
    )
    return out.split()[2] if out.split() else ""


def test_each_hosts_firewall_opens_what_its_roles_serve_to_whom_they_serve_it(fleet, fleet_cli):
    node, lb = APP_HOSTS[0], LB_HOSTS[0]
    replica = fleet_cli.run(node, "cabify_docker.replicas", "cabify", all=False)[node][0]
    published = f"{address(node)}:{replica['port']}"
    server = f"{address(SERVERS[0])}"
    gateway = TOPOLOGY["network"]["gateway"]
    targets = {
        "frontend": f"{address(lb)}:80",
        "vip": f"{VIP}:80",
        "lb stats": f"{address(lb)}:8404",
        "lb ssh": f"{address(lb)}:22",
        "replica": published,
        "consul rpc": f"{server}:8300",
        "consul gossip": f"{server}:8301",
        "consul http": f"{server}:8500",
        "consul dns": f"{server}:8600",
        "salt": f"{gateway}:4506",
        "registry": f"{gateway}:5000",
    }
    # Who reaches what: the master (the gateway), a fleet host that is no LB, an LB, and
    # a stranger on the fleet's network.
    expected = {
        "master": {"frontend", "vip", "lb stats", "lb ssh", "consul http", "salt", "registry"},
        APP_HOSTS[1]: {"frontend", "vip", "lb ssh", "consul rpc", "consul gossip", "salt", "registry"},
        LB_HOSTS[1]: {
            "frontend",
            "vip",
            "lb ssh",
            "replica",
            "consul rpc",
            "consul gossip",
            "salt",
            "registry",
        },
        "stranger": {"frontend", "vip", "lb ssh"},
    }
    before = salt_connection(node)
    # Load the rules again (as after a reboot) on every host, under load through the
    # VIP: the Salt connection it runs through stays, no request fails.
    with load_through(*LB_HOSTS) as clients:
        for host in APP_HOSTS + LB_HOSTS:
            host_run(host, "nft", "delete", "table", "inet", "cabify_firewall")
        applied = fleet_cli.run(APP_HOSTS + LB_HOSTS, "state.apply", "firewall")
        failed_states, changed = state_results(applied)
        assert not failed_states, failed_states
        assert set(changed) == set(APP_HOSTS + LB_HOSTS), (
            f"the rules were not loaded again everywhere: {changed}"
        )
        served_more(clients)
    assert before and salt_connection(node) == before, "the minion's connection to the master was cut"
    wrong = {}
    for where, reaches in expected.items():
        found = probe_from(where, list(targets.values()))
        seen = {name for name, target in targets.items() if reachable(found[target])}
        if seen != reaches:
            wrong[where] = {"opened": sorted(seen - reaches), "closed": sorted(reaches - seen)}
    assert not wrong, f"ports open or closed against the roles' rules: {wrong}"


@pytest.fixture(autouse=True)
def _fleet_whole(fleet):
    """Each test starts from a fleet that serves on every host, one LB with the VIP."""
    wait_for(pool_serves_everywhere, 90, "both LBs with every replica UP")
    wait_for(lambda: len(vip_holders()) == 1, 30, "one LB holding the VIP")
