"""Small helpers shared by the tests: polling with a deadline, and the real services'
APIs (dockerd, Consul, HAProxy), read per pool."""

from __future__ import annotations

import base64
import contextlib
import importlib.util
import json
import pathlib
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import docker

CONSUL = "http://127.0.0.1:8500"
REPO_UTILS = pathlib.Path(__file__).resolve().parent.parent / "_utils"
HAPROXY_SOCKET = "/run/haproxy/admin.sock"
STATS = "http://127.0.0.1:8404"
# The pools of pillar/stack.sls and their HAProxy frontends.
PORTS = {"cabify": 80, "shop": 8081}
FRONTEND = f"http://127.0.0.1:{PORTS['cabify']}"


def frontend(pool: str) -> str:
    return f"http://127.0.0.1:{PORTS[pool]}"


def consul_srv(name: str) -> list[str]:
    """The SRV records Consul's DNS (port 8600) gives for NAME now (such as
    ``_cabify._stable.service.consul``, what HAProxy asks), as dig's short lines
    ``priority weight port target``; none when it does not answer within 1 s."""
    answer = subprocess.run(
        [
            "dig",
            "+short",
            "+time=1",
            "+tries=1",
            "@127.0.0.1",
            "-p",
            "8600",
            name,
            "SRV",
        ],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    return [line for line in answer.splitlines() if line and not line.startswith(";")]


def wait_for(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll CHECK until it returns something truthy; fail saying WHAT was awaited."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except Exception as err:  # noqa: BLE001 - the service may not answer yet
            last = err
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


# Consul's ACL secrets, as the master keeps them (cabify_acl:secrets): the suite runs
# as root on the master, and acts on Consul as an operator with the management token.
ACL_SECRETS = "/etc/cabify/consul-acl.json"
MANAGEMENT = "management"
OPERATOR = "operator"


def consul_token(name: str = MANAGEMENT, cluster: str = "127.0.0.1:8500") -> str | None:
    """The management token (default) of CLUSTER (the one-host stack's by default;
    ``cabify_acl.cluster``), or this project's token NAME (``operator``,
    ``controller``, ``host:<minion>``...) derived as the master derives it; None
    before the master made its secrets."""
    try:
        with open(ACL_SECRETS, encoding="utf-8") as handle:
            secrets = json.load(handle)
    except FileNotFoundError:
        return None
    if name == MANAGEMENT:
        return ((secrets.get("management") or {}).get(cluster) or {}).get("SecretID")
    spec = importlib.util.spec_from_file_location("cabify_acl_for_tests", REPO_UTILS / "cabify_acl.py")
    acl = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(acl)
    return acl.token_ids(secrets, name)["SecretID"]


def http(
    method: str, url: str, body: Any = None, timeout: float = 5, token: str | None = MANAGEMENT
) -> tuple[int, bytes]:
    """METHOD URL with BODY (JSON unless bytes): status and body. A call to Consul's
    HTTP API (port 8500) carries the management token, or TOKEN (a name for
    consul_token, a secret, or None for none: anonymous)."""
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    headers = {}
    if token and ":8500/" in url:
        named = token in (MANAGEMENT, "operator", "controller") or token.startswith(("host:", "agent:"))
        secret = consul_token(token) if named else token
        if secret:
            headers["X-Consul-Token"] = secret
    req = urllib.request.Request(url, data=data, method=method, headers=headers)  # noqa: S310 - loopback only
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def consul(method: str, path: str, body: Any = None) -> Any:
    status, raw = http(method, CONSUL + path, body)
    assert status == 200, f"consul {method} {path}: HTTP {status} {raw[:200]!r}"
    return json.loads(raw) if raw.strip() else None


def forget_releases() -> bool:
    """Delete what the release controller released (Consul KV cabify/released/): the
    pools go back to the pillar files' versions at the next highstate. False when
    Consul does not answer yet, or has no leader (a fresh or rebooted host before its
    first highstate)."""
    try:
        status, _ = http("DELETE", f"{CONSUL}/v1/kv/cabify/released/?recurse=true")
    except OSError:
        return False
    return status == 200


def kv_get(key: str) -> Any:
    """A KV value as this project writes them (JSON), or None."""
    status, raw = http("GET", f"{CONSUL}/v1/kv/{key}?raw=true")
    if status == 404 or not raw.strip():
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode().strip()


def kv_tree(prefix: str) -> dict[str, Any]:
    status, raw = http("GET", f"{CONSUL}/v1/kv/{prefix}?recurse=true")
    if status == 404:
        return {}
    return {e["Key"]: json.loads(base64.b64decode(e["Value"])) for e in json.loads(raw) if e.get("Value")}


def haproxy(command: str) -> str:
    """One command on HAProxy's runtime API."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(HAPROXY_SOCKET)
        sock.sendall(command.encode() + b"\n")
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode()


def haproxy_info() -> dict[str, str]:
    return dict(line.split(": ", 1) for line in haproxy("show info").splitlines() if ": " in line)


def haproxy_servers(backend: str = "cabify") -> list[dict[str, str]]:
    """The backend's servers as rows of `show stat` (svname, status, addr, ...)."""
    lines = haproxy("show stat").splitlines()
    header = lines[0].lstrip("# ").split(",")
    rows = [dict(zip(header, line.split(","), strict=False)) for line in lines[1:] if line]
    return [r for r in rows if r["pxname"] == backend and r["svname"] not in ("FRONTEND", "BACKEND")]


def failed_states(ret_data: dict | None) -> dict[str, str]:
    if not isinstance(ret_data, dict):
        return {"(no state data)": str(ret_data)}
    return {k: v["comment"] for k, v in ret_data.items() if isinstance(v, dict) and v.get("result") is False}


def changed_states(ret_data: dict | None) -> dict[str, Any]:
    return {k: v["changes"] for k, v in (ret_data or {}).items() if v["changes"]}


def pool_state(ret_data: dict, pool: str = "cabify") -> dict:
    """The return of the pool's converged state in a state.apply."""
    return next(v for k, v in ret_data.items() if f"pool-{pool}-converged" in k)


# --- a pool, as the real services see it ---------------------------------------------------


def containers(pool: str = "cabify", all: bool = False) -> list:
    return docker.from_env().containers.list(
        all=all, filters={"label": f"cabify.pool={pool}"}, ignore_removed=True
    )


def running_replicas(pool: str = "cabify") -> dict[str, str]:
    """name -> address of the pool's running containers, straight from dockerd."""
    return {
        c.name: next(iter(c.attrs["NetworkSettings"]["Networks"].values()))["IPAddress"]
        for c in containers(pool)
    }


def versions_running(pool: str = "cabify") -> dict[str, int]:
    counts: dict[str, int] = {}
    for container in containers(pool):
        version = container.labels["cabify.version"]
        counts[version] = counts.get(version, 0) + 1
    return counts


def registered(pool: str = "cabify") -> dict[str, str]:
    """The pool's own instances in Consul (meta pool), by ID -> address."""
    services = consul("GET", "/v1/agent/services")
    return {sid: s["Address"] for sid, s in services.items() if (s.get("Meta") or {}).get("pool") == pool}


def is_up(status: str) -> bool:
    """HAProxy serves the server: ``UP``, or ``UP 1/2`` (just risen, or one failed check
    from down)."""
    return status == "UP" or status.startswith("UP ")


def haproxy_up_addresses(pool: str = "cabify") -> set[str]:
    return {s["addr"].rsplit(":", 1)[0] for s in haproxy_servers(pool) if is_up(s["status"])}


def pool_settled(count: int, pool: str = "cabify") -> bool:
    """COUNT replicas run, each registered and UP in HAProxy, and no other server there."""
    running = running_replicas(pool)
    return (
        len(running) == count
        and registered(pool) == running
        and haproxy_up_addresses(pool) == set(running.values())
        and all(is_up(s["status"]) or s["status"] == "MAINT" or not s["addr"] for s in haproxy_servers(pool))
    )


def pool_now(pool: str = "cabify") -> dict:
    """What ``pool_settled`` looks at, for a failure's message: the running replicas,
    their registrations and HAProxy's servers of the pool with an address."""
    return {
        "running": running_replicas(pool),
        "registered": registered(pool),
        "haproxy": {s["svname"]: f"{s['status']} {s['addr']}" for s in haproxy_servers(pool) if s["addr"]},
    }


def last_release(pool: str = "cabify") -> dict:
    records = kv_tree(f"cabify/history/{pool}/")
    return max(records.values(), key=lambda r: r["id"]) if records else {}


@contextlib.contextmanager
def pool_lock_held(holder: dict, pool: str = "cabify") -> Iterator[None]:
    """POOL's release lock held by the test as HOLDER (a lock record: id, strategy, ...)
    through a Consul session of its own, with no lock delay: a release may take the lock
    as soon as the test lets go."""
    session = consul(
        "PUT",
        "/v1/session/create",
        {"Name": f"test {holder['id']}", "TTL": "60s", "LockDelay": "0s", "Behavior": "delete"},
    )
    try:
        assert consul("PUT", f"/v1/kv/cabify/locks/{pool}?acquire={session['ID']}", holder) is True
        yield
    finally:
        consul("PUT", f"/v1/session/destroy/{session['ID']}")


# A script that tries a TCP connection to each HOST:PORT of its arguments and prints
# each one's fate as JSON: open, refused (reached, nothing listens) or filtered (no
# answer: a firewall dropped it). Run where the probe must come from (a container, a
# fleet host) with `python3 -c PORT_PROBE TARGET...`.
PORT_PROBE = """
import json, socket, sys
found = {}
for target in sys.argv[1:]:
    host, port = target.rsplit(":", 1)
    s = socket.socket()
    s.settimeout(1.5)
    try:
        s.connect((host, int(port)))
        found[target] = "open"
    except ConnectionRefusedError:
        found[target] = "refused"
    except OSError:
        found[target] = "filtered"
    finally:
        s.close()
print(json.dumps(found))
"""
