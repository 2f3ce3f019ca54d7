"""HAProxy finds replicas through Consul's DNS SRV records, without a reload."""

from __future__ import annotations

import json

from tests.helpers import FRONTEND, consul_srv, haproxy_info, haproxy_servers, http, wait_for
from tests.integration.conftest import StandInReplica, haproxy_server_up


def test_consul_dns_answers_srv_for_registered_replica(stand_in_replica):
    records = consul_srv("_cabify._tcp.service.consul")
    assert any(r.split()[2:3] == [str(stand_in_replica.port)] for r in records), (
        f"no SRV record for port {stand_in_replica.port}: {records}"
    )


def _instances_served(requests: int) -> set[str]:
    answers = [http("GET", FRONTEND + "/") for _ in range(requests)]
    assert all(status == 200 for status, _ in answers), [a for a in answers if a[0] != 200][:3]
    return {json.loads(body)["instance"] for _, body in answers}


def test_pool_changes_reach_haproxy_without_reload(stand_in_replica):
    pid_before = haproxy_info()["Pid"]
    replica = StandInReplica("test-discovery-2")
    replica.register()
    try:
        wait_for(lambda: haproxy_server_up(replica.port), 30, "the new replica UP in HAProxy's stats")
        assert {stand_in_replica.instance, replica.instance} <= _instances_served(40)
        replica.deregister()
        wait_for(
            lambda: not any(s["addr"].endswith(f":{replica.port}") for s in haproxy_servers()),
            30,
            "the deregistered replica to leave HAProxy's servers",
        )
        # The remaining replica may be re-checked after the change: wait until it serves.
        served = wait_for(
            lambda: (s := _instances_served(40)) and stand_in_replica.instance in s and s,
            30,
            "the remaining stand-in replica served again",
        )
        assert replica.instance not in served
    finally:
        replica.deregister(missing_ok=True)
        replica.stop()
    assert haproxy_info()["Pid"] == pid_before, "HAProxy was reloaded or restarted for a pool change"


def test_stats_page_and_prometheus_exporter(highstate):
    status, body = http("GET", "http://127.0.0.1:8404/metrics")
    assert status == 200 and b"haproxy_backend_status" in body
    status, body = http("GET", "http://127.0.0.1:8404/stats;csv")
    assert status == 200 and b"cabify" in body
