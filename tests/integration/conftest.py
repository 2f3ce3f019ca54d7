"""Fixtures of the integration tests: stand-in replicas registered in the real Consul,
pools converged to a known state, failpoints armed for one test."""

from __future__ import annotations

import http.server
import json
import os
import pathlib
import threading
import time
from collections.abc import Iterator

import pytest

from tests.helpers import (
    CONSUL,
    consul,
    containers,
    failed_states,
    forget_releases,
    haproxy_servers,
    is_up,
    kv_get,
    pool_now,
    pool_settled,
    versions_running,
    wait_for,
)
from tests.helpers import http as request

FAILPOINTS = pathlib.Path("/run/cabify/failpoints.json")


@pytest.fixture(autouse=True)
def _releases_forgotten() -> Iterator[None]:
    """What a test released through the controller stays its own: the next test's
    highstate converges to the pillar files' versions, as the tests expect."""
    yield
    forget_releases()


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

    def deregister(self, missing_ok: bool = False) -> None:
        """Deregister it; MISSING_OK: it may be gone already (with ACLs on, Consul answers
        500 "Unknown service" for one that is not registered)."""
        status, body = request("PUT", f"{CONSUL}/v1/agent/service/deregister/{self.instance}")
        gone = missing_ok and b"Unknown service" in body
        assert status == 200 or gone, f"deregistering {self.instance}: {status} {body!r}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def haproxy_server_up(port: int) -> bool:
    return any(is_up(s["status"]) and s.get("addr", "").endswith(f":{port}") for s in haproxy_servers())


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


def converge_pool(
    salt_cli,
    pool: str = "cabify",
    version: str = "1",
    replicas: int = 3,
    others: dict | None = None,
    **settings,
):
    """The pool at REPLICAS stable replicas of VERSION (by state.apply), settled. The
    other pools get what pillar/stack.sls says, or what OTHERS (pool -> settings) say."""
    pillar = {
        "cabify": {"pools": {**(others or {}), pool: {"version": version, "replicas": replicas, **settings}}}
    }
    ret = salt_cli.run("state.apply", "cabify", pillar=pillar, queue=True)
    assert ret.returncode == 0, failed_states(ret.data) or ret.stderr[-2000:]
    try:
        wait_for(
            lambda: (
                pool_settled(replicas, pool)
                and versions_running(pool) == ({version: replicas} if replicas else {})
            ),
            60,
            f"{replicas} replicas of version {version} in pool {pool}, registered and UP",
        )
    except AssertionError as err:
        raise AssertionError(f"{err}; the pool now: {pool_now(pool)}") from None
    return ret


# Back to a known pool quickly: every replica replaced in one batch.
QUICK_RELEASE = {"max_parallel": 3, "min_healthy_time": 0}
# What pillar/stack.sls and the formula's defaults make a replica of.
STACK_SPEC = {"env": {"DRAIN_TIMEOUT": "5"}, "resources": {"memory": "128m", "cpus": 0.5}}


def ensure_pool(salt_cli, pool: str = "cabify", version: str | None = "1", replicas: int = 3) -> str:
    """The pool as pillar/stack.sls makes it, at VERSION (any one version when None) and
    REPLICAS, with no release state left (lock, weights, canaries): converged only when
    the real services say it is not so already. Returns the version that runs."""
    from tests.unit.conftest import load  # noqa: PLC0415

    spec_hash = load("utils", "cabify_plan").spec_hash
    found = containers(pool, all=True)
    running = {c.labels.get("cabify.version") for c in found}
    if (
        len(found) == replicas
        and len(running) == 1
        and (version is None or running == {version})
        and all(
            c.labels.get("cabify.role") == "stable"
            and c.labels.get("cabify.spec-hash")
            == spec_hash(c.labels.get("cabify.version"), STACK_SPEC["env"], STACK_SPEC["resources"])
            for c in found
        )
        and pool_settled(replicas, pool)
        and kv_get(f"cabify/weights/{pool}") is None
        and kv_get(f"cabify/locks/{pool}") is None
    ):
        return running.pop()
    converge_pool(salt_cli, pool, version or "1", replicas, release=QUICK_RELEASE)
    return version or "1"


def unique_version(prefix: str) -> str:
    """A version no test released before: every release test goes forward."""
    return f"{prefix}{int(time.time() * 1000) % 100_000_000}"


@pytest.fixture
def pool_of_three(salt_cli, highstate):
    """Pool cabify at 3 replicas of version 1."""
    ensure_pool(salt_cli)


@pytest.fixture
def steady(salt_cli, highstate) -> str:
    """Pool cabify at 3 stable replicas of one version, whichever the last test left
    (release tests go forward from it instead of going back first); that version."""
    return ensure_pool(salt_cli, version=None)


@pytest.fixture
def failpoints() -> Iterator[callable]:
    """Arm failpoints (see _utils/cabify_failpoints.py) for one test: call it with
    {name: {"action": ..., "times": n}}; all are disarmed afterwards."""

    def arm(points: dict) -> None:
        FAILPOINTS.parent.mkdir(parents=True, exist_ok=True)
        tmp = FAILPOINTS.with_suffix(".tmp")
        tmp.write_text(json.dumps(points))
        os.replace(tmp, FAILPOINTS)

    try:
        yield arm
    finally:
        FAILPOINTS.unlink(missing_ok=True)
