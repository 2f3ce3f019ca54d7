"""HAProxy serves through a Consul outage. Consul is stopped for OUTAGE seconds (5
minutes; CABIFY_CONSUL_OUTAGE_SECONDS changes it for a quick local run). Meanwhile
HAProxy is reloaded, then restarted, and serves the replicas it last knew (its saved
server state, `init-addr last`, resolvers that hold their last answer). Once Consul is
back, a pool change reaches HAProxy again."""

from __future__ import annotations

import ipaddress
import os
import threading
import time
import urllib.request

import pytest

from tests.helpers import (
    CONSUL,
    FRONTEND,
    consul_srv,
    consul_token,
    haproxy_info,
    haproxy_servers,
    haproxy_up_addresses,
    http,
    is_up,
    running_replicas,
    wait_for,
)
from tests.integration.conftest import StandInReplica, haproxy_server_up
from tests.load import LoadClient

OUTAGE = float(os.environ.get("CABIFY_CONSUL_OUTAGE_SECONDS", "300"))
# The resolvers held Consul's last answer this long before (hold timeout/refused 30 s):
# the reload and the restart come after it, when only the new holds keep the servers.
FORMER_HOLD = 30
SERVER_STATE = "/var/lib/haproxy/server-state"
RAFT_SNAPSHOTS = "/var/lib/consul/raft/snapshots"


def consul_answers() -> bool:
    try:
        status, _ = http("GET", f"{CONSUL}/v1/status/leader", timeout=1)
    except OSError:
        return False
    return status == 200


def saved_addresses(path: str = SERVER_STATE) -> set[str]:
    """The addresses a saved server state (by default the one a new HAProxy loads)
    holds for pool cabify."""
    try:
        with open(path, encoding="utf-8") as saved:
            lines = saved.read().splitlines()
    except FileNotFoundError:
        return set()
    rows = [line.split() for line in lines[1:] if line and not line.startswith("#")]
    return {r[4] for r in rows if len(r) > 4 and r[1] == "cabify" and r[4] not in ("-", "0.0.0.0")}  # noqa: S104


def pool_index() -> int:
    """The Raft index of the pool's last change in Consul's catalog."""
    request = urllib.request.Request(  # noqa: S310 - loopback
        f"{CONSUL}/v1/health/service/cabify", headers={"X-Consul-Token": consul_token() or ""}
    )
    with urllib.request.urlopen(request, timeout=5) as resp:  # noqa: S310
        return int(resp.headers["X-Consul-Index"])


def snapshot_index() -> int:
    """The Raft index of the server's newest snapshot (directories term-index-time)."""
    names = os.listdir(RAFT_SNAPSHOTS) if os.path.isdir(RAFT_SNAPSHOTS) else []
    return max((int(n.split("-")[1]) for n in names if n.count("-") == 2), default=0)


class DnsWatch(threading.Thread):
    """Every address Consul's DNS gives for pool cabify while it runs (every 20 ms):
    a server that restarts must not answer replicas that left before it stopped."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.seen: set[str] = set()
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.02):
            for line in consul_srv("cabify.service.consul"):
                target = line.split()[-1] if len(line.split()) == 4 else ""
                label = target.split(".", 1)[0]
                if target.endswith(".addr.dc1.consul.") and len(label) == 8:
                    self.seen.add(str(ipaddress.IPv4Address(bytes.fromhex(label))))
                elif target:
                    self.seen.add(target)

    def __enter__(self) -> DnsWatch:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.join(5)


def twenty_answers() -> list[int]:
    """Twenty requests, each on a connection of its own: their statuses."""
    statuses = []
    for _ in range(20):
        try:
            statuses.append(http("GET", FRONTEND + "/", timeout=5)[0])
        except OSError:
            statuses.append(0)
    return statuses


@pytest.fixture
def consul_stopped(salt_cli):
    """Stops Consul's agent for the test; it is started again whatever happens."""
    outage = {}

    def stop() -> float:
        ret = salt_cli.run("service.stop", "consul")
        assert ret.returncode == 0 and ret.data is True, f"stopping Consul: {ret.data}"
        wait_for(lambda: not consul_answers(), 30, "Consul's HTTP API to stop answering")
        outage["since"] = time.monotonic()
        return outage["since"]

    try:
        yield stop
    finally:
        salt_cli.run("service.start", "consul")
        wait_for(consul_answers, 60, "Consul back, with a leader")


def test_haproxy_reloaded_and_restarted_through_a_consul_outage_serves_the_last_replicas(
    salt_cli, steady, consul_stopped
):
    replicas = set(running_replicas().values())
    # With Consul up, a new HAProxy learns servers from DNS alone; the last dump waits.
    wait_for(
        lambda: replicas <= saved_addresses(SERVER_STATE + ".last") and not saved_addresses(),
        30,
        f"HAProxy's last server state listing {replicas}, and none to load",
    )
    # A server that restarts replays what changed since its last snapshot: changes of
    # the last seconds before a crash (see DnsWatch). The pool's are in one here.
    changed = pool_index()
    wait_for(lambda: snapshot_index() >= changed, 30, f"a Raft snapshot at or past index {changed}")
    with LoadClient(workers=8, max_seconds=OUTAGE + 120) as before_restart:
        since = consul_stopped()
        wait_for(lambda: replicas <= saved_addresses(), 30, f"the server state to load listing {replicas}")
        wait_for(lambda: time.monotonic() - since > FORMER_HOLD + 5, FORMER_HOLD + 10, "past the former hold")
        pid = haproxy_info()["Pid"]
        assert salt_cli.run("service.reload", "haproxy").returncode == 0
        wait_for(lambda: haproxy_info()["Pid"] != pid, 30, "HAProxy's reload")
        wait_for(lambda: replicas <= haproxy_up_addresses(), 30, f"the reloaded HAProxy serving {replicas}")
        served_after_reload = before_restart.requests_so_far()
        wait_for(
            lambda: before_restart.requests_so_far() > served_after_reload + 200,
            30,
            "requests through the reloaded HAProxy",
        )
    before_restart.assert_served()
    # The reload closed the old process's idle kept-alive connections: at most one
    # request a client crossed such a close and was sent again (tests/load.py).
    assert before_restart.result.retried <= before_restart.workers, before_restart.result.retries
    # A restart closes every connection (no process keeps them): the load stops first.
    assert salt_cli.run("service.restart", "haproxy").returncode == 0
    statuses = wait_for(
        lambda: (s := twenty_answers()) and all(code == 200 for code in s) and s,
        30,
        "20 of 20 answers from HAProxy restarted while Consul is down",
    )
    assert statuses == [200] * 20
    assert not consul_answers(), "Consul came back before the end of the outage"
    restarted = haproxy_info()["Pid"]
    with LoadClient(workers=8, max_seconds=OUTAGE + 120) as after_restart:
        wait_for(
            lambda: time.monotonic() - since >= OUTAGE, OUTAGE + 10, f"the end of the {OUTAGE:.0f}s outage"
        )

        def serving() -> list[str]:
            return sorted(s["addr"].rsplit(":", 1)[0] for s in haproxy_servers() if is_up(s["status"]))

        # Consul's DNS is watched from its start until HAProxy serves the replicas again.
        with DnsWatch() as dns:
            assert salt_cli.run("service.start", "consul").returncode == 0
            wait_for(consul_answers, 60, "Consul back, with a leader")
            wait_for(lambda: dns.seen, 10, "Consul's DNS answering for the pool")
            # No server the restarted HAProxy loaded serves unless Consul still has it.
            wait_for(
                lambda: not saved_addresses(), 30, "the server state to load emptied once Consul answers"
            )
            wait_for(
                lambda: serving() == sorted(replicas), 30, f"HAProxy serving exactly the replicas {replicas}"
            )
        # A restarted server replays its log since its last snapshot: each state
        # it passes through must be no older than the outage (consul:config:raft_snapshot_*).
        assert dns.seen <= replicas, f"Consul's DNS answered gone replicas once back: {dns.seen - replicas}"
        assert haproxy_info()["Pid"] == restarted, "HAProxy was reloaded once Consul was back"
        # Changes flow again: a new instance registered in Consul is served.
        replica = StandInReplica("test-outage-stand-in")
        try:
            replica.register()
            registered = time.monotonic()
            wait_for(
                lambda: haproxy_server_up(replica.port),
                30,
                "the new instance UP in HAProxy once Consul is back",
            )
            seen_after = time.monotonic() - registered
        finally:
            replica.deregister()
            wait_for(
                lambda: not haproxy_server_up(replica.port), 30, "the deregistered instance out of HAProxy"
            )
            replica.stop()
    after_restart.assert_served()
    assert seen_after < 10, f"a new instance took {seen_after:.1f}s to reach HAProxy once Consul was back"
