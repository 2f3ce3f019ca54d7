"""Fixtures of the integration tests: stand-in replicas registered in the real Consul."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator

import pytest

from tests.helpers import consul, haproxy_servers, wait_for


class _Replica(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = json.dumps({"instance": self.server.instance, "path": self.path}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


class StandInReplica:
    """An HTTP server on loopback, registered in Consul as one instance of `cabify`."""

    def __init__(self, instance: str):
        self.instance = instance
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Replica)
        self.server.instance = instance
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def register(self) -> None:
        consul(
            "PUT",
            "/v1/agent/service/register",
            {
                "ID": self.instance,
                "Name": "cabify",
                "Tags": ["stable"],  # HAProxy's stable server-template reads _cabify._stable
                "Address": "127.0.0.1",
                "Port": self.port,
                "Check": {"HTTP": f"http://127.0.0.1:{self.port}/health", "Interval": "1s"},
            },
        )

    def deregister(self) -> None:
        consul("PUT", f"/v1/agent/service/deregister/{self.instance}")

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def haproxy_server_up(port: int) -> bool:
    return any(s["status"] == "UP" and s.get("addr", "").endswith(f":{port}") for s in haproxy_servers())


@pytest.fixture
def stand_in_replica(highstate) -> Iterator[StandInReplica]:
    """A registered stand-in replica, UP in HAProxy; deregistered afterwards."""
    replica = StandInReplica("test-stand-in-1")
    replica.register()
    try:
        wait_for(lambda: haproxy_server_up(replica.port), 30, f"{replica.instance} UP in HAProxy's stats")
        yield replica
    finally:
        replica.deregister()
        replica.stop()
