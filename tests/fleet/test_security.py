"""
The fleet's Consul closed to strangers: a client on the fleet's network without a
token, a load balancer's own token, and a load balancer (a minion the master does not
list) asking for a release change nothing, while both LBs serve with no failed
request; gossip is encrypted with the key the master gave, and servers refuse RPC
from anyone without a certificate of the master's CA.
"""

from __future__ import annotations

import json
import time

from tests.fleet.conftest import (
    APP_HOSTS,
    LB_HOSTS,
    SERVERS,
    address,
    fleet_consul,
    fleet_history,
    host_run,
)
from tests.fleet.test_fleet import load_through, served_more
from tests.helpers import consul_token, http, wait_for


def test_strangers_on_the_fleet_network_change_nothing_while_both_lbs_serve(
    fleet, fleet_cli, salt_master, event_listener
):
    server = f"http://{address(SERVERS[0])}:8500"
    instances = fleet_consul("/v1/catalog/service/cabify")
    replica = instances[0]
    lb_token = consul_token(f"host:{LB_HOSTS[0]}")
    history = fleet_history()
    since = time.time()
    with load_through(*LB_HOSTS) as clients:
        status, body = http(
            "PUT",
            f"{server}/v1/catalog/deregister",
            {"Node": replica["Node"], "ServiceID": replica["ServiceID"]},
            token=None,
        )
        assert status == 403, f"an anonymous deregistration answered {status} {body[:200]!r}"
        for key in ("cabify/desired/cabify", "cabify/weights/cabify", "cabify/commands/cabify"):
            status, body = http("PUT", f"{server}/v1/kv/{key}", {"version": "666"}, token=None)
            assert status == 403, f"an anonymous write of {key} answered {status} {body[:200]!r}"
        # lb1's own token, on lb1's own agent: it reads the catalog, registers nothing.
        register = {"Name": "cabify", "ID": "intruder", "Address": address(LB_HOSTS[0]), "Port": 80}
        code = (
            "import json, urllib.request, urllib.error\n"
            f"r = urllib.request.Request('http://127.0.0.1:8500/v1/agent/service/register', "
            f"data={json.dumps(register).encode()!r}, method='PUT',"
            f" headers={{'X-Consul-Token': {lb_token!r}}})\n"
            "try:\n    print(urllib.request.urlopen(r, timeout=5).status)\n"
            "except urllib.error.HTTPError as e:\n    print(e.code)\n"
        )
        assert host_run(LB_HOSTS[0], "python3", "-c", code).strip() == "403", (
            "the LB's token registered a service"
        )
        # An LB is not among the minions that may ask for a release.
        fleet_cli.run(
            LB_HOSTS[0], "event.send", "cabify/release/request", {"pool": "cabify", "version": "666"}
        )
        refused = wait_for(
            lambda: [
                e.data
                for e in event_listener.get_events(
                    [(salt_master.id, "cabify/release/refused")], after_time=since
                )
                if e.data.get("requester") == LB_HOSTS[0]
            ],
            60,
            f"the master refusing {LB_HOSTS[0]}'s release request",
        )
        assert "release_requesters" in refused[0]["reason"], refused
        served_more(clients)
    assert fleet_consul("/v1/catalog/service/cabify") == instances, "the pool's instances changed"
    assert fleet_history() == history, "a release was recorded"
    assert "intruder" not in {i["ServiceID"] for i in fleet_consul("/v1/catalog/service/cabify")}


def test_gossip_is_encrypted_and_rpc_needs_a_certificate_of_the_masters_ca(fleet):
    rings = fleet_consul("/v1/operator/keyring")
    lan = [r for r in rings if not r.get("WAN")]
    assert lan and all(len(r["Keys"]) == 1 for r in lan), f"the gossip keyrings: {rings}"
    assert all(r["NumNodes"] == len(APP_HOSTS) + len(LB_HOSTS) for r in lan if not r.get("Segment")), rings
    # RPC (8300) speaks TLS only to a client with a certificate of the master's CA: asked
    # from an LB (the servers' firewall opens 8300 to the fleet's hosts only).
    assert rpc_over_tls(LB_HOSTS[0], SERVERS[0], with_cert=False) == "refused"
    assert rpc_over_tls(LB_HOSTS[0], SERVERS[0], with_cert=True) == "accepted"


# On a fleet host: open a TLS RPC connection to a server with or without the host's
# own agent certificate; "accepted" when the server waits for a request after the
# handshake, "refused" when it ends the connection.
PROBE = """
import socket, ssl, sys
server, with_cert = sys.argv[1], sys.argv[2] == "yes"
tls_dir = "/etc/consul.d/tls"
context = ssl.create_default_context(cafile=tls_dir + "/ca.pem")
context.check_hostname = False
if with_cert:
    context.load_cert_chain(tls_dir + "/agent.pem", tls_dir + "/agent-key.pem")
raw = socket.create_connection((server, 8300), timeout=5)
raw.sendall(bytes([3]))  # Consul's RPCTLS: the connection turns TLS
try:
    tls = context.wrap_socket(raw)
    tls.settimeout(1)
    print("refused" if tls.recv(1) == b"" else "accepted")
except TimeoutError:
    print("accepted")
except (ssl.SSLError, OSError):
    print("refused")
"""


def rpc_over_tls(host: str, server: str, with_cert: bool) -> str:
    """What SERVER's RPC port makes of a TLS connection from HOST (see PROBE)."""
    return host_run(host, "python3", "-c", PROBE, address(server), "yes" if with_cert else "no").strip()
