"""The fleet tier: container hosts (scripts/fleet.sh) as minions of the test master,
converged from nothing by orch.fleet, and helpers that look at them from the machine:
each LB's HAProxy, each host's Consul agent and dockerd, through `docker exec`.

Run on its own with ``pytest -m fleet``; ``pytest -m "not fleet"`` leaves it out."""

from __future__ import annotations

import base64
import copy
import csv
import io
import json
import logging
import os
import pathlib
import subprocess
import sys
import time
import urllib.error
import urllib.request
from typing import Any

import pytest
import salt.client
import salt.config
import yaml

from tests.helpers import MANAGEMENT, consul_token, wait_for

REPO = pathlib.Path(__file__).resolve().parents[2]
TOPOLOGY = yaml.safe_load((REPO / "pillar" / "fleet.sls").read_text())["fleet"]
HOSTS = TOPOLOGY["hosts"]
APP_HOSTS = sorted(h for h, v in HOSTS.items() if "app" in v["roles"])
LB_HOSTS = sorted(h for h, v in HOSTS.items() if "lb" in v["roles"])
SERVERS = sorted(h for h, v in HOSTS.items() if "consul-server" in v["roles"])
REGISTRY = f"{TOPOLOGY['network']['gateway']}:{TOPOLOGY['registry_port']}"
STACK = yaml.safe_load((REPO / "pillar" / "stack.sls").read_text())
# Each app host runs the pool's replicas of pillar/stack.sls.
POOL_TOTAL = STACK["cabify"]["pools"]["cabify"]["replicas"] * len(APP_HOSTS)
log = logging.getLogger(__name__)
# What the fleet tier measured (seconds; counts as int), printed after the run: the
# README's figures.
FIGURES: dict[str, float | int] = {}


def pytest_collection_modifyitems(items):
    for item in items:
        if pathlib.Path(str(item.fspath)).is_relative_to(pathlib.Path(__file__).parent):
            item.add_marker(pytest.mark.fleet)


def pytest_terminal_summary(terminalreporter):
    if FIGURES:
        terminalreporter.write_line(
            "fleet figures: "
            + ", ".join(
                f"{name} {value}" if isinstance(value, int) else f"{name} {value:.1f}s"
                for name, value in FIGURES.items()
            )
        )


def address(host: str) -> str:
    return HOSTS[host]["address"]


def container(host: str) -> str:
    return f"cabify-fleet-{host}"


def host_run(host: str, *command: str, timeout: float = 30, check: bool = True) -> str:
    """COMMAND run on fleet host HOST (docker exec); its output."""
    proc = subprocess.run(
        ["docker", "exec", container(host), *command],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if check and proc.returncode:
        raise AssertionError(f"{host}: {' '.join(command)}: exit {proc.returncode}: {proc.stderr[-500:]}")
    return proc.stdout


_SHOW_STAT = """
import socket
s = socket.socket(socket.AF_UNIX)
s.connect("/run/haproxy/admin.sock")
s.sendall(b"show stat\\n")
print(b"".join(iter(lambda: s.recv(65536), b"")).decode())
"""


def unclean_requests(lb: str) -> list[str]:
    """LB's logged requests (HAProxy's request ring, the newest tens of seconds) whose
    termination state is not ``----``: what to look at when a request failed."""
    text = host_run(lb, "python3", "-c", _SHOW_STAT.replace("show stat", "show events requests"), timeout=10)
    return [line for line in text.splitlines() if '"GET ' in line and " ---- " not in line]


def lb_health(lb: str, frontend: str = "cabify") -> dict[str, str]:
    """What LB's HAProxy says of itself and of FRONTEND: its process (a reload changes
    it), and the counters of connections and requests it refused, failed or could
    not parse; compared before and after a failure."""
    info = host_run(lb, "python3", "-c", _SHOW_STAT.replace("show stat", "show info"), timeout=10)
    found = {k: v for k, v in (line.split(": ", 1) for line in info.splitlines() if ": " in line)}
    stat = host_run(lb, "python3", "-c", _SHOW_STAT, timeout=10)
    row = next(
        (
            r
            for r in csv.DictReader(io.StringIO(stat.lstrip("# ")))
            if r["pxname"] == frontend and r["svname"] == "FRONTEND"
        ),
        {},
    )
    keys = ("Pid", "Uptime_sec", "CurrConns", "CumConns")
    counters = (
        "conn_tot",
        "req_tot",
        "ereq",
        "dreq",
        "dcon",
        "dses",
        "hrsp_5xx",
        "hrsp_other",
        "intercepted",
    )
    errors = host_run(lb, "python3", "-c", _SHOW_STAT.replace("show stat", "show errors"), timeout=10)
    return {
        **{k: found.get(k, "?") for k in keys},
        **{k: row.get(k, "?") for k in counters},
        "errors": errors[-300:],
    }


def lb_servers(lb: str, backend: str = "cabify") -> dict[str, str]:
    """LB's servers of BACKEND that have an address: ``address:port`` -> status (of the
    slot not in maintenance, where two slots hold one address)."""
    text = host_run(lb, "python3", "-c", _SHOW_STAT, timeout=10)
    rows = csv.DictReader(io.StringIO(text.lstrip("# ")))
    found: dict[str, str] = {}
    for r in rows:
        if (
            r["pxname"] != backend
            or r["svname"] in ("FRONTEND", "BACKEND")
            or r.get("addr") in ("", "-", None)
        ):
            continue
        # A slot in maintenance beside another one of the same address (kept from a saved
        # server state) does not hide the one that serves.
        if r["addr"] not in found or found[r["addr"]].startswith("MAINT"):
            found[r["addr"]] = r["status"]
    return found


def haproxy_stats(lb: str, backend: str = "cabify") -> list[dict]:
    """LB's server rows of BACKEND, from its stats page on its fleet address (what the
    release controller reads): cheap enough to read many times a second."""
    with urllib.request.urlopen(f"http://{address(lb)}:8404/stats;csv", timeout=2) as resp:
        rows = csv.DictReader(io.StringIO(resp.read().decode().lstrip("# ")))
        return [r for r in rows if r["pxname"] == backend and r["svname"] not in ("FRONTEND", "BACKEND")]


def in_rotation(lb: str, backend: str = "cabify") -> set[str]:
    """The ``address:port`` of BACKEND's servers that LB sends requests to."""
    return {a for a, status in lb_servers(lb, backend).items() if status.startswith("UP")}


def out_of_rotation(host: str, backend: str = "cabify") -> bool:
    """No LB sends requests of BACKEND to a replica on HOST."""
    return all(
        not any(a.startswith(address(host) + ":") for a in in_rotation(lb, backend)) for lb in LB_HOSTS
    )


# How the master names the fleet's Consul in its ACL secrets (cabify_acl.cluster): the
# servers' addresses as scripts/fleet.sh lists them, and the HTTP port.
FLEET_CLUSTER = ",".join(address(server) for server in SERVERS) + ":8500"


def consul_api(host: str, path: str) -> Any:
    """GET PATH of HOST's own Consul agent (it listens on the host's loopback), with the
    management token."""
    url = f"http://127.0.0.1:8500{path}"
    headers = {"X-Consul-Token": consul_token(cluster=FLEET_CLUSTER) or ""}
    code = (
        "import urllib.request; print(urllib.request.urlopen(urllib.request.Request("
        f"{url!r}, headers={headers!r}), timeout=3).read().decode())"
    )
    return json.loads(host_run(host, "python3", "-c", code, timeout=10))


def fleet_consul(path: str, method: str = "GET", body: Any = None, token: str = MANAGEMENT) -> Any:
    """PATH of the fleet's Consul HTTP API (a server's, on the fleet network, where the
    master reaches it too) with the management token (or token TOKEN, a name for
    consul_token): the JSON answer, or None for a 404 or an empty one."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"http://{address(SERVERS[0])}:8500{path}",
        data=data,
        method=method,
        headers={"X-Consul-Token": consul_token(token, FLEET_CLUSTER) or ""},
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:  # noqa: S310 - the fleet's network
            raw = answer.read()
    except urllib.error.HTTPError as err:
        if err.code == 404:
            return None
        raise
    return json.loads(raw) if raw.strip() else None


def fleet_kv(key: str) -> Any:
    """A KV value of the fleet's Consul, as this project writes them (JSON), or None."""
    return fleet_consul(f"/v1/kv/{key}?raw=true")


def fleet_history(pool: str = "cabify") -> list[dict]:
    """The pool's release records in the fleet's Consul."""
    entries = fleet_consul(f"/v1/kv/cabify/history/{pool}/?recurse=true") or []
    return [json.loads(base64.b64decode(e["Value"])) for e in entries if e.get("Value")]


class FleetCli:
    """`salt -L HOSTS FUN ARGS...` on the test master, for the fleet's hosts."""

    def __init__(self, master_config_file: str):
        self._opts = salt.config.client_config(master_config_file)

    def run(self, hosts: list[str] | str, fun: str, *args, timeout: float = 600, **kwargs) -> dict:
        targets = [hosts] if isinstance(hosts, str) else list(hosts)
        client = salt.client.LocalClient(mopts=copy.deepcopy(self._opts))
        try:
            returned = client.cmd(
                targets, fun, list(args), tgt_type="list", timeout=timeout, kwarg=kwargs or None
            )
        finally:
            client.destroy()
        missing = sorted(set(targets) - set(returned))
        assert not missing, f"{fun}: no return from {missing}"
        return returned


def state_results(returned: dict) -> tuple[dict, dict]:
    """Per host: the states that failed (ID -> comment) and those that changed."""
    failed, changed = {}, {}
    for host, states in returned.items():
        if not isinstance(states, dict):
            failed[host] = {"?": str(states)}
            continue
        bad = {k.split("_|-")[1]: v.get("comment") for k, v in states.items() if not v.get("result")}
        moved = {k.split("_|-")[1]: v.get("changes") for k, v in states.items() if v.get("changes")}
        if bad:
            failed[host] = bad
        if moved:
            changed[host] = moved
    return failed, changed


def pool_serves_everywhere(backend: str = "cabify", total: int = POOL_TOTAL) -> bool:
    """Every LB has TOTAL servers of BACKEND in rotation, on every app host."""
    for lb in LB_HOSTS:
        up = in_rotation(lb, backend)
        if len(up) != total or {a.split(":")[0] for a in up} != {address(h) for h in APP_HOSTS}:
            return False
    return True


@pytest.fixture(scope="session")
def fleet_cli(salt_master) -> FleetCli:
    return FleetCli(salt_master.config_file)


@pytest.fixture(scope="session")
def fleet(salt_master, salt_minion, highstate, fleet_cli):
    """The fleet of pillar/fleet.sls, from nothing: hosts started bare (Debian 12 and a
    Salt minion of the test master), then one orch.fleet. Removed at the end."""
    env = {
        **os.environ,
        "VENV": sys.prefix,
        "SALT_CONFIG_DIR": salt_master.config_dir,
        "SALT_MASTER_PORT": str(salt_master.config["ret_port"]),
        "SALT_PUBLISH_PORT": str(salt_master.config["publish_port"]),
    }

    def fleet_sh(action: str) -> None:
        proc = subprocess.run(
            [str(REPO / "scripts" / "fleet.sh"), action],
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        assert proc.returncode == 0, f"fleet.sh {action}: {proc.stdout[-1000:]} {proc.stderr[-2000:]}"

    keep = os.environ.get("CABIFY_KEEP_FLEET") == "1"
    started = time.monotonic()
    fleet_sh("down")
    try:
        fleet_sh("up")
        # fleet.sh pointed the release controller at the fleet (master.d): the master's
        # reactor reads that once it restarts, as `make fleet` restarts make up's.
        # The suite's own minion is restarted too: once in a while it did not connect
        # to the restarted master's publisher again (the fleet's minions always did).
        salt_minion.terminate()
        salt_master.terminate()
        salt_master.start()
        salt_minion.start()
        fleet_sh("answering")
        wait_for(
            lambda: (
                salt_master.salt_cli(timeout=10).run("test.ping", minion_tgt=salt_minion.id).returncode == 0
            ),
            60,
            f"{salt_minion.id} answering the restarted master",
        )
        hosts_up = time.monotonic() - started
        ret = salt_master.salt_run_cli(timeout=1200).run("state.orchestrate", "orch.fleet")
        assert ret.returncode == 0, f"orch.fleet failed: {str(ret.data)[-3000:]} {ret.stderr[-2000:]}"
        seconds = time.monotonic() - started
        FIGURES.update({"hosts started": hosts_up, "converged from nothing": seconds})
        wait_for(pool_serves_everywhere, 60, f"both LBs: {POOL_TOTAL} replicas UP on every app host")
    except BaseException:
        if not keep:
            fleet_sh("down")
        raise
    yield {"orch": ret, "seconds": seconds}
    if not keep:
        fleet_sh("down")
