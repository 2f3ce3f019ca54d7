"""
The Cabify App's replica pool on this host: image, containers, Consul registration.

Docker is the truth for what runs (containers labelled with pool, version and role),
Consul for what serves (one service instance per replica, ID = container name, with an
HTTP check on /health). Every function does one thing and is usable alone:

.. code-block:: bash

    salt-call cabify.replicas
    salt-call cabify.reconcile
    salt-call cabify.plan version=2 replicas=3

Settings come from pillar ``cabify`` (see salt/cabify/pillar.example) through
``config.get``; arguments override them.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import secrets
import socket
import subprocess
import tempfile
import time
from typing import Any

from salt.exceptions import CommandExecutionError

try:
    import docker
    import docker.errors

    HAS_DOCKER = True
except ImportError:
    HAS_DOCKER = False
try:
    import consul

    HAS_CONSUL = True
except ImportError:
    HAS_CONSUL = False

log = logging.getLogger(__name__)

__virtualname__ = "cabify"

LABEL_POOL = "cabify.pool"
LABEL_VERSION = "cabify.version"
LABEL_ROLE = "cabify.role"
LABEL_SPEC = "cabify.spec-hash"
LABEL_SOURCE = "cabify.source-hash"
APP_PORT = 8080


def __virtual__():
    missing = [name for name, ok in (("docker", HAS_DOCKER), ("py-consul", HAS_CONSUL)) if not ok]
    if missing:
        return (False, f"cabify: the Python libraries {', '.join(missing)} are not installed in Salt's venv")
    return __virtualname__


# --- clients and settings -------------------------------------------------------------


def _setting(key: str, default: Any = None) -> Any:
    return __salt__["config.get"](f"cabify:{key}", default)


def _docker():
    try:
        return docker.from_env(timeout=120)
    except docker.errors.DockerException as err:
        raise CommandExecutionError(f"cannot reach dockerd: {err}") from err


def _consul():
    host = __salt__["config.get"]("consul:api:host", "127.0.0.1")
    port = __salt__["config.get"]("consul:config:ports:http", 8500)
    return consul.Consul(host=host, port=port)


def _haproxy(command: str) -> str:
    path = __salt__["config.get"]("haproxy:runtime_api:socket", "/run/haproxy/admin.sock")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(path)
            sock.sendall(command.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
    except OSError as err:
        raise CommandExecutionError(f"HAProxy runtime API at {path}: {err}") from err
    return b"".join(chunks).decode()


@contextlib.contextmanager
def _pool_lock(pool: str, timeout: float = 300):
    """One change of a host's pool at a time (converge, heal), whoever runs it: a
    second one waits for the first instead of undoing its work half-way."""
    os.makedirs("/run/cabify", exist_ok=True)
    with open(f"/run/cabify/{pool}.lock", "w", encoding="utf-8") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError as err:
                if time.monotonic() > deadline:
                    raise CommandExecutionError(
                        f"pool {pool} is busy: another change held it for {timeout}s"
                    ) from err
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


# --- image -----------------------------------------------------------------------------


def source_hash(source_dir: str, version: str, base_image: str) -> str:
    """
    Content hash of the app's build context, its version and its base image: the image
    is rebuilt only when this changes.

    CLI Example:

    .. code-block:: bash

        salt-call cabify.source_hash /srv/cabify/app 2 cabify-base:bookworm
    """
    digest = hashlib.sha256(f"{version}\0{base_image}\0".encode())
    for root, dirs, files in os.walk(source_dir):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(root, name)
            digest.update(os.path.relpath(path, source_dir).encode() + b"\0")
            with open(path, "rb") as handle:
                digest.update(handle.read())
    return digest.hexdigest()[:16]


def image_exists(image: str) -> bool:
    """
    True if IMAGE (name:tag) is in the local image store.

    CLI Example:

    .. code-block:: bash

        salt-call cabify.image_exists cabify-base:bookworm
    """
    try:
        _docker().images.get(image)
    except docker.errors.ImageNotFound:
        return False
    except docker.errors.APIError as err:
        raise CommandExecutionError(f"docker: {err}") from err
    return True


def build_base_image(image: str, mirror: str, suite: str = "bookworm") -> str:
    """
    Build IMAGE from nothing with debootstrap (minbase + python3) and ``docker import``:
    the base image of hosts that reach no registry. Takes about half a minute.

    CLI Example:

    .. code-block:: bash

        salt-call cabify.build_base_image cabify-base:bookworm http://deb.debian.org/debian
    """
    with tempfile.TemporaryDirectory(prefix="cabify-rootfs-") as rootfs:
        steps = [
            ["debootstrap", "--variant=minbase", "--include=python3", suite, rootfs, mirror],
            ["sh", "-c", f"tar -C {rootfs} -c . | docker import - {image}"],
        ]
        for step in steps:
            proc = subprocess.run(step, capture_output=True, text=True, check=False)
            if proc.returncode:
                raise CommandExecutionError(f"building {image}: {step[0]} failed: {proc.stderr[-2000:]}")
    return image


def image_current(version: str, source_dir: str, base_image: str) -> bool:
    """
    True if ``cabify-app:VERSION`` exists and was built from these sources and base.

    CLI Example:

    .. code-block:: bash

        salt-call cabify.image_current 2 /srv/cabify/app cabify-base:bookworm
    """
    try:
        image = _docker().images.get(f"cabify-app:{version}")
    except docker.errors.ImageNotFound:
        return False
    return image.labels.get(LABEL_SOURCE) == source_hash(source_dir, version, base_image)


def build_image(version: str, source_dir: str, base_image: str) -> str:
    """
    Build ``cabify-app:VERSION`` from SOURCE_DIR's Dockerfile on BASE_IMAGE, labelled
    with the content hash of its sources.

    CLI Example:

    .. code-block:: bash

        salt-call cabify.build_image 2 /srv/cabify/app cabify-base:bookworm
    """
    tag = f"cabify-app:{version}"
    try:
        _docker().images.build(
            path=source_dir,
            tag=tag,
            buildargs={"BASE_IMAGE": base_image},
            labels={LABEL_SOURCE: source_hash(source_dir, version, base_image), LABEL_VERSION: version},
            rm=True,
            pull=False,
        )
    except (docker.errors.BuildError, docker.errors.APIError) as err:
        raise CommandExecutionError(f"building {tag} on {base_image}: {err}") from err
    return tag


# --- replicas ----------------------------------------------------------------------------


def spec_hash(version: str, env: dict | None = None, resources: dict | None = None) -> str:
    """
    Hash of what a replica is made of (version, env, resources): a replica whose label
    differs is replaced.

    CLI Example:

    .. code-block:: bash

        salt-call cabify.spec_hash 2
    """
    text = repr((version, sorted((env or {}).items()), sorted((resources or {}).items())))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _replica_info(container) -> dict:
    labels = container.labels
    networks = container.attrs.get("NetworkSettings", {}).get("Networks", {}) or {}
    address = next((n.get("IPAddress") for n in networks.values() if n.get("IPAddress")), "")
    return {
        "name": container.name,
        "id": container.short_id,
        "pool": labels.get(LABEL_POOL),
        "version": labels.get(LABEL_VERSION),
        "role": labels.get(LABEL_ROLE, "stable"),
        "spec": labels.get(LABEL_SPEC),
        "status": container.status,
        "restarts": container.attrs.get("RestartCount", 0),
        "address": address,
        "port": APP_PORT,
    }


def replicas(pool: str = "cabify", all: bool = True) -> list[dict]:
    """
    List the pool's containers (running or not, unless ``all=False``) as
    ``{name, id, version, role, spec, status, address, port}``.

    CLI Example:

    .. code-block:: bash

        salt-call cabify.replicas
        salt-call cabify.replicas all=False --out=json
    """
    try:
        found = _docker().containers.list(all=all, filters={"label": f"{LABEL_POOL}={pool}"})
    except docker.errors.APIError as err:
        raise CommandExecutionError(f"docker: {err}") from err
    return sorted((_replica_info(c) for c in found), key=lambda r: r["name"])


def network_present(name: str = "cabify") -> bool:
    """
    Create the pool's Docker bridge network NAME if absent; True if it was created.

    CLI Example:

    .. code-block:: bash

        salt-call cabify.network_present cabify
    """
    client = _docker()
    if client.networks.list(names=[name]):
        return False
    client.networks.create(name, driver="bridge", labels={LABEL_POOL: name})
    return True


def start_replica(
    pool: str,
    version: str,
    role: str = "stable",
    env: dict | None = None,
    resources: dict | None = None,
    network: str = "cabify",
) -> dict:
    """
    Start one replica of VERSION (image ``cabify-app:VERSION``) on NETWORK and return it.

    CLI Example:

    .. code-block:: bash

        salt-call cabify.start_replica cabify 2
    """
    name = f"{pool}-{version}-{secrets.token_hex(3)}"
    resources = resources or {}
    environment = {**(env or {}), "APP_VERSION": version, "INSTANCE": name, "PORT": str(APP_PORT)}
    labels = {
        LABEL_POOL: pool,
        LABEL_VERSION: version,
        LABEL_ROLE: role,
        LABEL_SPEC: spec_hash(version, env, resources),
    }
    kwargs: dict[str, Any] = {}
    if resources.get("memory"):
        kwargs["mem_limit"] = resources["memory"]
    if resources.get("cpus"):
        kwargs["nano_cpus"] = int(float(resources["cpus"]) * 1e9)
    try:
        container = _docker().containers.run(
            f"cabify-app:{version}",
            name=name,
            detach=True,
            environment=environment,
            labels=labels,
            network=network,
            restart_policy={"Name": "unless-stopped"},
            hostname=name,
            **kwargs,
        )
        container.reload()
    except docker.errors.APIError as err:
        raise CommandExecutionError(f"starting a replica of cabify-app:{version}: {err}") from err
    log.info("cabify: started replica %s", name)
    return _replica_info(container)


# --- Consul registration ---------------------------------------------------------------


def register(name: str, service: str = "cabify", keep_status: bool = False) -> dict:
    """
    Register the running replica NAME in Consul as an instance of SERVICE, with its
    address, port, version and role, an HTTP check on /health every second, and its
    role's weight while a canary runs (``cabify_canary.role_weight``). KEEP_STATUS
    re-registers an instance with its check's current status, so that a weight change
    never takes a passing replica out of service for a check interval.

    CLI Example:

    .. code-block:: bash

        salt-call cabify.register cabify-2-a1b2c3
    """
    replica = next((r for r in replicas() if r["name"] == name), None)
    if replica is None or replica["status"] != "running" or not replica["address"]:
        raise CommandExecutionError(f"no running replica named {name!r} with an address")
    deregister_after = _setting("registration:deregister_critical_after", "30s")
    check = consul.Check.http(
        f"http://{replica['address']}:{replica['port']}/health",
        "1s",
        timeout="1s",
        deregister=deregister_after,
    )
    if keep_status:
        status = registrations(service).get(name, {}).get("status")
        if status in ("passing", "warning", "critical"):
            check["Status"] = status
    weight = None
    if "cabify_canary.role_weight" in __salt__:
        weight = __salt__["cabify_canary.role_weight"](replica["role"], replica["pool"])
    _consul().agent.service.register(
        service,
        service_id=name,
        address=replica["address"],
        port=replica["port"],
        tags=[replica["role"], f"v{replica['version']}"],
        meta={"pool": replica["pool"], "version": replica["version"], "role": replica["role"]},
        check=check,
        # HAProxy weight = SRV weight / 256, and Consul fills the SRV weight from Passing.
        weights={"Passing": 256 * weight, "Warning": 1} if weight else None,
    )
    return replica


def deregister(name: str) -> bool:
    """
    Remove the Consul registration of replica NAME; True if there was one.

    CLI Example:

    .. code-block:: bash

        salt-call cabify.deregister cabify-2-a1b2c3
    """
    agent = _consul().agent
    if name not in agent.services():
        return False
    agent.service.deregister(name)
    return True


def registrations(service: str = "cabify") -> dict[str, dict]:
    """
    The local agent's instances of SERVICE, by ID, with their check status.

    CLI Example:

    .. code-block:: bash

        salt-call cabify.registrations
    """
    agent = _consul().agent
    checks = agent.checks()
    found = {}
    for sid, svc in agent.services().items():
        if svc.get("Service") != service:
            continue
        states = [c["Status"] for c in checks.values() if c.get("ServiceID") == sid]
        worst = next((s for s in ("critical", "warning") if s in states), "passing" if states else "none")
        found[sid] = {
            "address": svc.get("Address"),
            "port": svc.get("Port"),
            "tags": svc.get("Tags", []),
            "pool": (svc.get("Meta") or {}).get("pool"),
            "status": worst,
        }
    return found


def reconcile(pool: str = "cabify", service: str = "cabify") -> dict:
    """
    Make Consul match Docker: deregister this pool's instances (meta ``pool``) whose
    container is gone or not running, register running replicas that are missing.
    Instances registered by anything else are left alone. Returns what it did.

    CLI Example:

    .. code-block:: bash

        salt-call cabify.reconcile
    """
    running = {r["name"]: r for r in replicas(pool) if r["status"] == "running"}
    registered = registrations(service)
    # Only what this pool registered (meta pool) is ours to forget.
    ours = {sid for sid, reg in registered.items() if reg["pool"] == pool}
    done: dict[str, list[str]] = {"deregistered": [], "registered": []}
    for sid in sorted(ours - set(running)):
        deregister(sid)
        done["deregistered"].append(sid)
    for name, replica in sorted(running.items()):
        current = registered.get(name)
        if current is None or current["address"] != replica["address"] or current["pool"] != pool:
            register(name, service)
            done["registered"].append(name)
    addresses = {f"{r['address']}:{r['port']}" for r in running.values()}
    for slot in _stuck_slots(addresses):
        _haproxy(f"set server cabify/{slot} state ready")
        done.setdefault("slots_released", []).append(slot)
    return done


def _stuck_slots(live_addresses: set[str], backend: str = "cabify") -> list[str]:
    """server-template slots left in drain with no live replica behind them."""
    return [
        row["svname"]
        for row in _haproxy_rows(backend)
        if row.get("status", "").startswith("DRAIN") and row.get("addr") not in live_addresses
    ]


# --- health and drain ------------------------------------------------------------------


def _haproxy_rows(backend: str) -> list[dict]:
    lines = _haproxy("show stat").splitlines()
    header = lines[0].lstrip("# ").split(",") if lines else []
    rows = [dict(zip(header, line.split(","), strict=False)) for line in lines[1:] if line]
    return [r for r in rows if r.get("pxname") == backend and r.get("svname") not in ("FRONTEND", "BACKEND")]


def haproxy_servers(backend: str = "cabify") -> dict[str, dict]:
    """
    BACKEND's servers that have an address, by ``address:port``: slot name, state,
    weight and current sessions.

    CLI Example:

    .. code-block:: bash

        salt-call cabify.haproxy_servers
    """
    return {
        row["addr"]: {
            "name": row["svname"],
            "state": row["status"],
            "weight": int(row.get("uweight") or row.get("weight") or 0),
            "sessions": int(row.get("scur") or 0),
        }
        for row in _haproxy_rows(backend)
        if row.get("addr")
    }


def haproxy_role_counters(backend: str = "cabify") -> dict[str, dict]:
    """
    Cumulative counters of BACKEND's servers summed by role (the server-template
    prefix, ``stable`` or ``canary``): requests sent to them and errors (5xx answers,
    response errors, and attempts that HAProxy retried on another server).

    CLI Example:

    .. code-block:: bash

        salt-call cabify.haproxy_role_counters
    """

    def number(row: dict, key: str) -> int:
        return int(row.get(key) or 0)

    out: dict[str, dict] = {}
    for row in _haproxy_rows(backend):
        role = row["svname"].rstrip("0123456789")
        answered = sum(number(row, f"hrsp_{k}") for k in ("1xx", "2xx", "3xx", "4xx", "5xx", "other"))
        failed = number(row, "wretr") + number(row, "eresp")
        totals = out.setdefault(role, {"requests": 0, "errors": 0})
        totals["requests"] += answered + failed
        totals["errors"] += number(row, "hrsp_5xx") + failed
    return out


_LOG_LINE = re.compile(
    r"\[(?P<date>\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d\.\d{3})\] \S+ (?P<backend>[\w.-]+)/(?P<server>[\w.-]+) "
    r"-?\d+/-?\d+/-?\d+/(?P<tr>-?\d+)/-?\d+ (?P<status>-?\d+) "
)


def request_latencies(
    since: float = 0, backend: str = "cabify", ring: str = "requests"
) -> dict[str, list[int]]:
    """
    Response times (ms, HAProxy's Tr) of the requests BACKEND's servers answered since
    SINCE (epoch seconds), by role, from HAProxy's request log ring RING (runtime API
    ``show events``).

    CLI Example:

    .. code-block:: bash

        salt-call cabify.request_latencies
    """
    out: dict[str, list[int]] = {}
    for line in _haproxy(f"show events {ring}").splitlines():
        found = _LOG_LINE.search(line)
        if not found or found["backend"] != backend or int(found["tr"]) < 0:
            continue
        at = (
            time.mktime(time.strptime(found["date"][:-4], "%d/%b/%Y:%H:%M:%S"))
            + int(found["date"][-3:]) / 1000
        )
        if at >= since:
            out.setdefault(found["server"].rstrip("0123456789"), []).append(int(found["tr"]))
    return out


def haproxy_server(address: str, port: int = APP_PORT, backend: str = "cabify") -> dict | None:
    """
    The HAProxy server (``{name, state, weight, sessions}``) that ADDRESS:PORT fills in
    BACKEND, if any.

    CLI Example:

    .. code-block:: bash

        salt-call cabify.haproxy_server 172.18.0.5
    """
    return haproxy_servers(backend).get(f"{address}:{port}")


def healthy(name: str, service: str = "cabify") -> bool:
    """
    True once replica NAME is passing in Consul and UP in HAProxy.

    CLI Example:

    .. code-block:: bash

        salt-call cabify.healthy cabify-2-a1b2c3
    """
    reg = registrations(service).get(name)
    if not reg or reg["status"] != "passing":
        return False
    server = haproxy_server(reg["address"], reg["port"])
    return bool(server and server["state"] == "UP")


def wait_healthy(names: list[str], timeout: float = 60, min_healthy_time: float = 0) -> None:
    """
    Wait until every replica of NAMES has been healthy for MIN_HEALTHY_TIME seconds;
    raise naming the ones that are not (or whose container stopped) by TIMEOUT.

    CLI Example:

    .. code-block:: bash

        salt-call cabify.wait_healthy '[cabify-2-a1b2c3]' timeout=30
    """
    deadline = time.monotonic() + timeout
    healthy_since: dict[str, float] = {}
    while True:
        now = time.monotonic()
        current = {r["name"]: r for r in replicas()}
        dead = [
            n
            for n in names
            if n not in current or current[n]["status"] in ("exited", "dead") or current[n]["restarts"]
        ]
        if dead:
            raise CommandExecutionError(f"replicas crashed before becoming healthy: {', '.join(dead)}")
        for name in names:
            if healthy(name):
                healthy_since.setdefault(name, now)
            else:
                healthy_since.pop(name, None)
        if all(now - healthy_since.get(n, now + 1) >= min_healthy_time for n in names):
            return
        if now > deadline:
            late = [n for n in names if n not in healthy_since]
            raise CommandExecutionError(f"replicas not healthy after {timeout}s: {', '.join(late)}")
        time.sleep(0.25)


def drain(name: str, drain_timeout: float = 10, service: str = "cabify") -> None:
    """
    Take replica NAME out of service with no failed request: drain it in HAProxy,
    deregister it from Consul, wait for its sessions to end (up to DRAIN_TIMEOUT), then
    stop it with SIGTERM (the app finishes what it holds) and remove it.

    CLI Example:

    .. code-block:: bash

        salt-call cabify.drain cabify-1-a1b2c3
    """
    replica = next((r for r in replicas() if r["name"] == name), None)
    if replica is None:
        deregister(name)
        return
    server = haproxy_server(replica["address"]) if replica["address"] else None
    if server:
        _haproxy(f"set server cabify/{server['name']} state drain")
    deregister(name)
    deadline = time.monotonic() + drain_timeout
    while server and time.monotonic() < deadline:
        now = haproxy_server(replica["address"])
        if not now or now["sessions"] == 0:
            break
        time.sleep(0.1)
    try:
        container = _docker().containers.get(name)
        container.stop(timeout=int(drain_timeout) + 5)
        _remove(container)
    except docker.errors.NotFound:
        pass
    except docker.errors.APIError as err:
        raise CommandExecutionError(f"stopping replica {name}: {err}") from err
    if server:
        _release_slot(server["name"], replica["address"])
    log.info("cabify: drained and removed replica %s", name)


def remove_role(role: str = "canary", pool: str = "cabify", drain_timeout: float = 5) -> list[str]:
    """
    Take every replica of ROLE in POOL out of service and remove it: all of them leave
    Consul first (no new request reaches them), then each is drained and removed. Holds
    the pool's lock, so that a heal cannot bring one back half-way.

    CLI Example:

    .. code-block:: bash

        salt-call cabify.remove_role canary
    """
    with _pool_lock(pool):
        names = [r["name"] for r in replicas(pool) if r["role"] == role]
        for name in names:
            deregister(name)
        for name in names:
            drain(name, drain_timeout=drain_timeout)
    return names


def _remove(container) -> None:
    """Remove CONTAINER; one that is gone or being removed already (a heal that saw
    it stop, say) is as good as removed."""
    try:
        container.remove(force=True)
    except docker.errors.NotFound:
        pass
    except docker.errors.APIError as err:
        if err.status_code != 409 or "in progress" not in str(err):
            raise


def _release_slot(slot: str, address: str, timeout: float = 10) -> None:
    """Put a drained server-template slot back to ready once DNS has taken ADDRESS out
    of it: a slot keeps its admin state, and the next replica it receives would never
    get traffic while it is still in drain."""
    deadline = time.monotonic() + timeout
    while haproxy_server(address) is not None and time.monotonic() < deadline:
        time.sleep(0.2)
    _haproxy(f"set server cabify/{slot} state ready")


# --- the pool ----------------------------------------------------------------------------


def plan(
    version: str,
    replicas: int = 3,
    env: dict | None = None,
    resources: dict | None = None,
    pool: str = "cabify",
    role: str | None = None,
) -> dict:
    """
    What it takes for POOL to run exactly REPLICAS stable replicas of VERSION with ENV
    and RESOURCES: ``{"keep": [...], "start": N, "remove": [...]}``. Canary replicas
    are removed too, unless ROLE limits the plan to the replicas of that role. Changes
    nothing.

    CLI Example:

    .. code-block:: bash

        salt-call cabify.plan 2 replicas=5
    """
    wanted = spec_hash(version, env, resources)
    current = [r for r in _list(pool) if role is None or r["role"] == role]
    good = [
        r["name"]
        for r in current
        if r["spec"] == wanted and r["status"] == "running" and r["role"] == "stable"
    ]
    keep = good[:replicas]
    remove = [r["name"] for r in current if r["name"] not in keep]
    return {"keep": keep, "start": replicas - len(keep), "remove": remove}


_list = replicas  # `replicas` is also an argument name of plan() and converge()


def converge(
    version: str,
    replicas: int = 3,
    env: dict | None = None,
    resources: dict | None = None,
    pool: str = "cabify",
    network: str = "cabify",
    healthy_timeout: float = 60,
    drain_timeout: float = 10,
) -> dict:
    """
    Carry out :py:func:`plan`: start the missing replicas first and wait until they are
    healthy, then drain and remove the surplus; finally reconcile Consul with Docker.
    If new replicas never become healthy they are removed again and the old ones, never
    touched, keep serving.

    CLI Example:

    .. code-block:: bash

        salt-call cabify.converge 2 replicas=3
    """
    with _pool_lock(pool):
        todo = plan(version, replicas, env, resources, pool)
        network_present(network)
        started: list[str] = []
        try:
            for _ in range(todo["start"]):
                started.append(start_replica(pool, version, "stable", env, resources, network)["name"])
                register(started[-1])
            if started:
                wait_healthy(started, timeout=healthy_timeout)
        except Exception:
            # Nothing half-done: the new replicas go, the old ones were never touched.
            for name in started:
                drain(name, drain_timeout=0)
            raise
        for name in todo["remove"]:
            drain(name, drain_timeout=drain_timeout)
        reconciled = reconcile(pool)
    return {"started": started, "removed": todo["remove"], "reconciled": reconciled}


# --- self-healing ------------------------------------------------------------------------

_OWN_ENV = ("APP_VERSION=", "INSTANCE=", "PORT=")


def _clone_spec(container) -> dict:
    """version, role, env and resources of CONTAINER, to start its like."""
    config = container.attrs.get("Config", {})
    host = container.attrs.get("HostConfig", {})
    env = dict(e.split("=", 1) for e in config.get("Env") or [] if "=" in e and not e.startswith(_OWN_ENV))
    env = {k: v for k, v in env.items() if k not in ("PATH", "PYTHONUNBUFFERED")}
    resources = {}
    if host.get("Memory"):
        resources["memory"] = f"{host['Memory'] // (1024 * 1024)}m"
    if host.get("NanoCpus"):
        resources["cpus"] = host["NanoCpus"] / 1e9
    labels = container.labels
    networks = list((container.attrs.get("NetworkSettings", {}).get("Networks") or {}).keys())
    return {
        "version": labels.get(LABEL_VERSION),
        "role": labels.get(LABEL_ROLE, "stable"),
        "env": env,
        "resources": resources,
        "network": networks[0] if networks else "cabify",
    }


def heal(pool: str = "cabify", replace_critical: bool = False, service: str = "cabify") -> dict:
    """
    Replace the pool's replicas that died (killed, crashed) with new ones of the same
    version, role, env and resources, and, with REPLACE_CRITICAL, the running ones that
    are critical in Consul; remove replicas that were stopped on purpose (drained:
    deregistered, exit code 0). Then reconcile Consul with Docker. Never looks at
    pillar: a heal restores what ran, it does not release.

    CLI Example:

    .. code-block:: bash

        salt-call cabify.heal
        salt-call cabify.heal replace_critical=True
    """
    with _pool_lock(pool):
        return _heal(pool, replace_critical, service)


def _heal(pool: str, replace_critical: bool, service: str) -> dict:
    client = _docker()
    registered = registrations(service)
    done: dict[str, Any] = {"replaced": {}, "removed": []}
    for container in client.containers.list(all=True, filters={"label": f"{LABEL_POOL}={pool}"}):
        state = container.attrs.get("State", {})
        name = container.name
        dead = container.status in ("exited", "dead")
        critical = container.status == "running" and registered.get(name, {}).get("status") == "critical"
        if dead and state.get("ExitCode", 0) == 0 and name not in registered:
            _remove(container)
            done["removed"].append(name)
            continue
        if not dead and not (critical and replace_critical):
            continue
        spec = _clone_spec(container)
        replacement = start_replica(
            pool, spec["version"], spec["role"], spec["env"], spec["resources"], spec["network"]
        )
        register(replacement["name"], service)
        if dead:
            deregister(name)
            _remove(container)
        else:
            drain(name, drain_timeout=0, service=service)
        done["replaced"][name] = replacement["name"]
        log.warning("cabify: replaced %s replica %s with %s", container.status, name, replacement["name"])
    done["reconciled"] = reconcile(pool, service)
    return done


# --- rolling releases ----------------------------------------------------------------------


def _progress(release_id: str | None, step: str, **data: Any) -> None:
    """A progress event ``cabify/release/<id>/<step>`` (shown by ``salt-run state.event``)."""
    log.info("cabify release %s: %s %s", release_id, step, data)
    if release_id:
        __salt__["event.send"](f"cabify/release/{release_id}/{step}", data)


def _batches(to_start: int, old: list[str], max_parallel: int) -> list[tuple[int, list[str]]]:
    """(replicas to start, old replicas to drain) per batch, MAX_PARALLEL at a time."""
    batches = []
    while to_start > 0 or old:
        starts = min(max_parallel, to_start)
        batches.append((starts, old[:max_parallel]))
        to_start -= starts
        old = old[max_parallel:]
    return batches


def rolling_plan(
    version: str,
    replicas: int = 3,
    env: dict | None = None,
    resources: dict | None = None,
    max_parallel: int = 1,
    pool: str = "cabify",
    role: str | None = None,
) -> dict:
    """
    The batches of a rolling release of POOL to VERSION: in each, the replicas to start
    and the old ones to drain afterwards. Changes nothing.

    CLI Example:

    .. code-block:: bash

        salt-call cabify.rolling_plan 2 max_parallel=2
    """
    todo = plan(version, replicas, env, resources, pool, role)
    running = {r["name"] for r in _list(pool) if r["status"] == "running"}
    old = [n for n in todo["remove"] if n in running]
    batches = _batches(todo["start"], old, max(1, int(max_parallel)))
    gone = [n for n in todo["remove"] if n not in running]
    return {
        "keep": todo["keep"],
        "remove_stopped": gone,
        "batches": [{"start": s, "drain": d} for s, d in batches],
    }


def rolling(
    version: str,
    replicas: int = 3,
    env: dict | None = None,
    resources: dict | None = None,
    max_parallel: int = 1,
    min_healthy_time: float = 3,
    healthy_deadline: float = 60,
    auto_revert: bool = True,
    drain_timeout: float = 5,
    pool: str = "cabify",
    network: str = "cabify",
    release_id: str | None = None,
    role: str | None = None,
) -> dict:
    """
    Roll POOL to VERSION batch by batch: start MAX_PARALLEL new replicas (surge), wait
    until they have been passing in Consul and UP in HAProxy for MIN_HEALTHY_TIME, then
    drain the same number of old ones. If a new replica crashes or is not healthy by
    HEALTHY_DEADLINE the release stops; with AUTO_REVERT the old version is restored to
    its full count (it never stopped serving) and every new replica is removed. ROLE
    limits the release to the replicas of that role (a canary's promotion leaves the
    canaries alone).

    CLI Example:

    .. code-block:: bash

        salt-call cabify.rolling 2 replicas=3 max_parallel=1
    """
    with _pool_lock(pool):
        steps = rolling_plan(version, replicas, env, resources, max_parallel, pool, role)
        network_present(network)
        for name in steps["remove_stopped"]:
            drain(name, drain_timeout=0)
        client = _docker()
        started: list[str] = []
        drained_specs: list[dict] = []
        _progress(release_id, "plan", version=version, batches=steps["batches"])
        for number, batch in enumerate(steps["batches"], start=1):
            _progress(release_id, "batch", number=number, of=len(steps["batches"]), **batch)
            new: list[str] = []
            try:
                for _ in range(batch["start"]):
                    new.append(start_replica(pool, version, "stable", env, resources, network)["name"])
                    started.append(new[-1])
                    register(new[-1])
                if new:
                    wait_healthy(new, timeout=healthy_deadline, min_healthy_time=min_healthy_time)
                    _progress(release_id, "batch-healthy", number=number, started=new)
            except Exception as err:  # whatever failed, the old version must keep serving
                _progress(release_id, "failed", batch=number, reason=str(err))
                undone = _revert(pool, started if auto_revert else new, drained_specs if auto_revert else [])
                raise CommandExecutionError(
                    f"release to version {version} stopped at batch {number}: {err}; "
                    + ("reverted: " if auto_revert else "not reverted (auto_revert is off): ")
                    + undone
                ) from err
            for name in batch["drain"]:
                try:
                    drained_specs.append(_clone_spec(client.containers.get(name)))
                except docker.errors.NotFound:
                    continue
                drain(name, drain_timeout=drain_timeout)
            _progress(release_id, "batch-done", number=number, started=new, drained=batch["drain"])
        reconcile(pool)
    return {
        "started": started,
        "removed": [n for b in steps["batches"] for n in b["drain"]] + steps["remove_stopped"],
    }


def _revert(pool: str, new: list[str], drained_specs: list[dict]) -> str:
    """Start again what was drained (like for like), then take out NEW replicas."""
    restored = []
    for spec in drained_specs:
        replica = start_replica(
            pool, spec["version"], spec["role"], spec["env"], spec["resources"], spec["network"]
        )
        register(replica["name"])
        restored.append(replica["name"])
    if restored:
        try:
            wait_healthy(restored, timeout=60)
        except CommandExecutionError as err:
            log.error("cabify: restored replicas not healthy: %s", err)
    for name in new:
        drain(name, drain_timeout=0)
    return f"removed {len(new)} new replica(s), restored {len(restored)} old one(s)"
