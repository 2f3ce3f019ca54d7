"""
This host's HAProxy, through its runtime API: the servers of a pool's backend (filled
from Consul's DNS), drains, and the live figures a canary is judged on.

HAProxy learns the pool from DNS; the runtime API is only for what DNS cannot say:
drain a server now, read states, sessions and counters. Nothing here holds state that
DNS would overwrite. Each pool's backend is named after the pool.

.. code-block:: bash

    salt-call cabify_lb.servers cabify
    salt-call cabify_lb.figures cabify
    salt-call cabify_lb.command "show servers state"
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import socket
import struct
import time

from salt.exceptions import CommandExecutionError

__virtualname__ = "cabify_lb"
log = logging.getLogger(__name__)

_LOG_LINE = re.compile(
    r"\[(?P<date>\d\d/\w{3}/\d{4}:\d\d:\d\d:\d\d\.\d{3})\] \S+ (?P<backend>[\w.-]+)/(?P<server>[\w.-]+) "
    r"-?\d+/-?\d+/-?\d+/(?P<tr>-?\d+)/-?\d+ (?P<status>-?\d+) "
)


def __virtual__():
    return __virtualname__


def command(cmd: str) -> str:
    """
    Run one command on HAProxy's runtime API (``haproxy:runtime_api:socket``) and return
    its answer.

    CLI Example:

    .. code-block:: bash

        salt-call cabify_lb.command "show info"
    """
    path = __salt__["config.get"]("haproxy:runtime_api:socket", "/run/haproxy/admin.sock")
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(path)
            sock.sendall(cmd.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
    except OSError as err:
        raise CommandExecutionError(f"HAProxy runtime API at {path}: {cmd!r}: {err}") from err
    return b"".join(chunks).decode()


def _addressed(dump: str) -> int:
    """The servers with an address in a ``show servers state`` dump."""
    found = 0
    for line in dump.splitlines()[1:]:
        fields = line.split()
        if line.startswith("#") or len(fields) < 5:
            continue
        found += fields[4] not in ("-", "0.0.0.0", "::")  # noqa: S104 (no address, not a bind)
    return found


def _dns_answers(name: str, qtype: int, timeout: float = 0.5) -> int | None:
    """How many answers the DNS server HAProxy's resolvers ask (the host's Consul
    agent) gives for NAME (QTYPE: 1 A, 33 SRV): 0 for no such name, None when it does
    not answer or answers with an error."""
    server = __salt__["config.get"]("haproxy:resolvers:nameserver", "127.0.0.1")
    port = int(__salt__["config.get"]("haproxy:resolvers:port", 8600))
    ident = secrets.randbelow(65536)
    labels = b"".join(bytes([len(label)]) + label.encode() for label in name.split(".") if label)
    query = (
        struct.pack(">HHHHHH", ident, 0x0100, 1, 0, 0, 0) + labels + b"\x00" + struct.pack(">HH", qtype, 1)
    )
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.sendto(query, (server, port))
            answer = sock.recv(65535)
        except OSError:
            return None
    if len(answer) < 12 or struct.unpack(">H", answer[:2])[0] != ident:
        return None
    rcode = answer[3] & 0x0F
    if rcode == 3:  # NXDOMAIN
        return 0
    return struct.unpack(">H", answer[6:8])[0] if rcode == 0 else None


def dns_answers() -> bool:
    """
    Whether the DNS server HAProxy's resolvers ask (``haproxy:resolvers:nameserver``
    and ``port``: the host's Consul agent) answers.

    CLI Example:

    .. code-block:: bash

        salt-call cabify_lb.dns_answers
    """
    return _dns_answers("consul.service.consul", 1) is not None


def pools_resolve() -> bool:
    """
    Whether every backend's stable replicas (``_<pool>._stable.service.consul``) are
    in Consul's DNS: what a HAProxy that starts from DNS alone needs to serve at once.

    CLI Example:

    .. code-block:: bash

        salt-call cabify_lb.pools_resolve
    """
    backends = __salt__["config.get"]("haproxy:backends", {}) or {}
    return all(bool(_dns_answers(f"_{pool}._stable.service.consul", 33)) for pool in backends)


def _write(path: str, text: str) -> None:
    """Replace PATH whole with TEXT (written beside it, then renamed)."""
    temporary = f"{path}.{os.getpid()}.tmp"
    try:
        with open(temporary, "w", encoding="utf-8") as out:
            out.write(text)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except OSError as err:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise CommandExecutionError(f"saving HAProxy's server state to {path}: {err}") from err


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as known:
            return known.read()
    except FileNotFoundError:
        return ""


def _serving_only(dump: str) -> str:
    """The rows of a ``show servers state`` DUMP whose server serves: UP, and neither
    in maintenance nor drained (a slot the sweep put aside, a replica a release is
    draining). A server a new process must not start from is left out whole."""
    aside = _FORCED_MAINT | _FORCED_DRAIN | _NO_ADDRESS

    def serves(number: int, line: str) -> bool:
        fields = line.split()
        if number < 2 or line.startswith("#") or len(fields) < 7:
            return True
        return fields[5] == "2" and not int(fields[6]) & aside

    return "".join(line for n, line in enumerate(dump.splitlines(keepends=True)) if serves(n, line))


def save_server_state(path: str | None = None) -> str:
    """
    Keep what HAProxy knows of every server that serves (``show servers state``:
    address, state, weight; servers down, in maintenance or drained are left out) for
    a HAProxy that starts while Consul is down. PATH (default
    ``haproxy:server_state:file``) is the file every new HAProxy process loads
    (``load-server-state-from-file``); the last dump is kept beside it in
    ``PATH.last``.

    - Consul's DNS answers, with every pool's stable replicas: the dump goes to
      ``PATH.last``, and PATH holds no server. A new process then learns every server
      from DNS alone: a loaded server whose replica has gone would stay (HAProxy 2.6
      resolves its saved name on its own, and Consul answers the address names it
      gives forever).
    - Otherwise (Consul down, or just back and its checks not passing yet): PATH gets
      the last dump, so a HAProxy reloaded or restarted during the outage serves the
      last known replicas. Once Consul answers again, the slots such a HAProxy loaded
      and Consul no longer lists are put in maintenance (``sweep_slots``).

    A dump without any addressed server never replaces one that has some (a HAProxy
    that just started with nothing to serve must not erase what the last one knew).
    Says what it did; an error only when a file cannot be written.

    CLI Example:

    .. code-block:: bash

        salt-call cabify_lb.save_server_state
    """
    path = path or __salt__["config.get"]("haproxy:server_state:file", "/var/lib/haproxy/server-state")
    last = f"{path}.last"
    try:
        dump = _serving_only(command("show servers state"))
    except CommandExecutionError as err:
        dump = f"HAProxy's runtime API does not answer ({err})"
    fresh = dump.startswith("1\n") and (_addressed(dump) or not _addressed(_read(last)))
    if fresh and dump != _read(last):
        _write(last, dump)
    kept = _read(last)
    if dns_answers() and pools_resolve():
        header = "".join(kept.splitlines(keepends=True)[:2]) or "1\n"
        if _read(path) != header:
            _write(path, header)
        said = f"Consul answers: {_addressed(kept)} addressed server(s) kept in {last}; {path} holds none"
        swept = _sweep()
        return said + (f"; slots swept: {swept}" if swept else "")
    if _addressed(kept) and not _addressed(_read(path)):
        # Once: what a new process loads then stays as it was when Consul went.
        _write(path, kept)
    return (
        f"Consul does not answer for every pool: {path} holds the last {_addressed(kept)} addressed server(s)"
    )


def _sweep() -> dict:
    """sweep_slots on every backend, with what the last sweep found absent (kept in
    /run/cabify): what changed, by backend."""
    memory = "/run/cabify/lb-sweep.json"
    try:
        with open(memory, encoding="utf-8") as saved:
            before = json.load(saved)
    except (OSError, ValueError):
        before = {}
    now, changed = {}, {}
    for backend in __salt__["config.get"]("haproxy:backends", {}) or {}:
        try:
            swept = sweep_slots(backend, __salt__["cabify_consul.passing"](backend), before.get(backend))
        except CommandExecutionError as err:
            log.warning("cabify_lb: sweeping %s's slots: %s", backend, err)
            continue
        now[backend] = swept["absent"]
        if swept["maint"] or swept["ready"]:
            changed[backend] = {"maint": swept["maint"], "ready": swept["ready"]}
            log.warning(
                "cabify_lb: %s: slots out of Consul in maintenance %s, back %s",
                backend,
                swept["maint"],
                swept["ready"],
            )
    os.makedirs(os.path.dirname(memory), exist_ok=True)
    _write(memory, json.dumps(now))
    return changed


def _rows(backend: str) -> list[dict]:
    return __utils__["cabify_analysis.stat_rows"](command("show stat"), backend)


def stats_url() -> str:
    """
    Where this HAProxy's stats page answers in CSV (``haproxy:stats``), for readers on
    other hosts (the release controller reads a canary's figures there, many times a
    second): on an LB whose stats page is bound to its fleet address, that address.

    CLI Example:

    .. code-block:: bash

        salt-call cabify_lb.stats_url
    """
    bind = __salt__["config.get"]("haproxy:stats:bind", "127.0.0.1")
    port = __salt__["config.get"]("haproxy:stats:port", 8404)
    return f"http://{bind}:{port}/stats;csv"


def servers(backend: str) -> dict[str, dict]:
    """
    BACKEND's servers that have an address, by ``address:port``: slot name, role (the
    server-template's prefix), state, whether it is ``up`` (``UP``, or ``UP 1/2``: up
    and serving, one more failed check from down), weight and current sessions.

    CLI Example:

    .. code-block:: bash

        salt-call cabify_lb.servers cabify
    """
    return __utils__["cabify_analysis.servers"](_rows(backend))


def server(backend: str, address: str, port: int) -> dict | None:
    """
    The server of BACKEND that ADDRESS:PORT fills, if any.

    CLI Example:

    .. code-block:: bash

        salt-call cabify_lb.server cabify 172.18.0.5 8080
    """
    return servers(backend).get(f"{address}:{port}")


def set_state(backend: str, slot: str, state: str) -> None:
    """
    Set server SLOT of BACKEND to STATE (``ready``, ``drain`` or ``maint``).

    CLI Example:

    .. code-block:: bash

        salt-call cabify_lb.set_state cabify stable3 drain
    """
    if state not in ("ready", "drain", "maint"):
        raise CommandExecutionError(f"server state must be ready, drain or maint (got {state!r})")
    answer = command(f"set server {backend}/{slot} state {state}").strip()
    if answer:
        raise CommandExecutionError(f"HAProxy: set server {backend}/{slot} state {state}: {answer}")


def drain(backend: str, address: str, port: int) -> str | None:
    """
    Stop sending new requests to the server ADDRESS:PORT fills in BACKEND (its
    sessions finish); the slot's name, or None when no server has that address.

    CLI Example:

    .. code-block:: bash

        salt-call cabify_lb.drain cabify 172.18.0.5 8080
    """
    found = server(backend, address, port)
    if found is None:
        return None
    set_state(backend, found["name"], "drain")
    return found["name"]


def wait_idle(backend: str, address: str, port: int, timeout: float) -> bool:
    """
    Wait until the server ADDRESS:PORT of BACKEND has no session (or is gone); True if
    it became idle within TIMEOUT seconds.

    CLI Example:

    .. code-block:: bash

        salt-call cabify_lb.wait_idle cabify 172.18.0.5 8080 10
    """
    deadline = time.monotonic() + timeout
    while True:
        found = server(backend, address, port)
        if found is None or found["sessions"] == 0:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def drain_servers(backend: str, addresses: list[str]) -> dict[str, str]:
    """
    Stop sending new requests to each server of BACKEND that ADDRESSES
    (``address:port``) fill; the slot each one fills, by address (an address that no
    server has is left out).

    CLI Example:

    .. code-block:: bash

        salt-call cabify_lb.drain_servers cabify '[10.213.0.11:32768]'
    """
    found = servers(backend)
    slots = {address: found[address]["name"] for address in addresses if address in found}
    for slot in slots.values():
        set_state(backend, slot, "drain")
    return slots


def wait_slots_idle(backend: str, slots: list[str] | dict, timeout: float) -> dict:
    """
    Wait until each server slot of BACKEND in SLOTS has no session (SLOTS may be a
    mapping of LB host to its slots: this host's are taken), for up to TIMEOUT seconds.
    Returns ``idle`` (all of them reached 0), ``busy`` (the sessions left, by slot),
    ``waited`` (seconds) and ``at_start`` (each slot's state, address and sessions when
    the wait began).

    CLI Example:

    .. code-block:: bash

        salt-call cabify_lb.wait_slots_idle cabify '[stable3]' 10
    """
    if isinstance(slots, dict):
        slots = slots.get(__grains__.get("id"), [])
    wanted = set(slots)
    started = time.monotonic()
    first = None
    while True:
        rows = [row for row in _rows(backend) if row["svname"] in wanted]
        busy = {row["svname"]: int(row.get("scur") or 0) for row in rows if int(row.get("scur") or 0)}
        if first is None:
            first = {
                row["svname"]: f"{row.get('status')} {row.get('addr') or '-'} {row.get('scur')}"
                for row in rows
            }
        waited = round(time.monotonic() - started, 2)
        if not busy or waited >= timeout:
            return {"idle": not busy, "busy": busy, "waited": waited, "at_start": first}
        time.sleep(0.05)


def drain_until_idle(backend: str, addresses: list[str], timeout: float) -> dict:
    """
    ``drain_servers`` then ``wait_slots_idle`` in one call, so that the wait starts
    the moment the drain is set: what ``wait_slots_idle`` returns, and ``slots`` (the
    slot each address fills).

    CLI Example:

    .. code-block:: bash

        salt-call cabify_lb.drain_until_idle cabify '[10.213.0.11:32768]' 5
    """
    slots = drain_servers(backend, addresses)
    return {"slots": slots, **wait_slots_idle(backend, sorted(slots.values()), timeout)}


def agreement(backend: str, expected: dict[str, int | None]) -> list[str]:
    """
    How BACKEND's servers differ from EXPECTED, what Consul says must serve (``address:port``
    to weight; None: any weight): expected servers missing or not UP, servers UP that
    are not expected, wrong weights. Empty when they agree. A slot that a drain left
    behind and that DNS gave an expected server is put back to ready on the way.

    CLI Example:

    .. code-block:: bash

        salt-call cabify_lb.agreement cabify '{"10.213.0.11:32768": 1}'
    """
    problems, drained = __utils__["cabify_analysis.disagreement"](servers(backend), expected)
    for slot in drained:
        set_state(backend, slot, "ready")
    return problems


# Admin state bits of `show servers state`: forced maintenance and forced drain, what
# the runtime API sets (resolution or configuration set the others).
_FORCED_MAINT = 0x01
_FORCED_DRAIN = 0x08
_NO_ADDRESS = 0x20


def server_states(backend: str) -> list[dict]:
    """
    BACKEND's servers as ``show servers state`` has them: slot, address, port and admin
    state bits (0x01 forced maintenance, 0x08 forced drain, 0x20 no address from DNS).

    CLI Example:

    .. code-block:: bash

        salt-call cabify_lb.server_states cabify
    """
    lines = [line for line in command(f"show servers state {backend}").splitlines() if line.strip()]
    header = next((line.lstrip("# ").split() for line in lines if line.startswith("#")), [])
    rows = [dict(zip(header, line.split(), strict=False)) for line in lines if not line.startswith("#")]
    return [
        {
            "name": row["srv_name"],
            "address": None if row.get("srv_addr") in (None, "-", "0.0.0.0") else row["srv_addr"],  # noqa: S104
            "port": int(row.get("srv_port") or 0),
            "admin_state": int(row.get("srv_admin_state") or 0),
        }
        for row in rows
        if row.get("be_name") == backend
    ]


def release_stuck_slots(backend: str, live: list[str]) -> list[str]:
    """
    Put back to ready every slot of BACKEND that the runtime API left in drain or
    maintenance while it holds no server, or one of the LIVE replicas
    (``address:port``) that must serve. Slots holding any other address are left
    alone (a replica being drained elsewhere, an operator's own maintenance).

    CLI Example:

    .. code-block:: bash

        salt-call cabify_lb.release_stuck_slots cabify '[172.18.0.5:8080]'
    """
    stuck = [
        row["name"]
        for row in server_states(backend)
        if row["admin_state"] & (_FORCED_MAINT | _FORCED_DRAIN)
        and (row["address"] is None or f"{row['address']}:{row['port']}" in set(live))
    ]
    for slot in stuck:
        set_state(backend, slot, "ready")
    return stuck


def sweep_slots(
    backend: str, passing: dict[str, list[str]], absent_before: list[str] | None = None
) -> dict[str, list[str]]:
    """
    Keep BACKEND's slots to what Consul says (PASSING: role -> ``address:port``, as
    ``cabify_consul.passing`` gives it). A slot HAProxy loaded from its saved server
    state stays even once its replica is gone (HAProxy 2.6 resolves its saved name on
    its own), and would send requests to whatever takes that address next: such a slot
    goes to maintenance, and comes back when Consul lists its address for its role
    again. A slot is put in maintenance only if it was already absent at the sweep
    before (ABSENT_BEFORE, from the last answer's ``absent``): DNS drops the slots it
    gave within its interval, and a slot a release drains is left alone. With no
    stable replica passing at all (Consul just started, its checks not run yet) the
    stable slots are left alone.

    CLI Example:

    .. code-block:: bash

        salt-call cabify_lb.sweep_slots cabify '{stable: [172.18.0.5:8080]}'
    """
    swept: dict[str, list[str]] = {"maint": [], "ready": [], "absent": []}
    for row in server_states(backend):
        if row["address"] is None or row["admin_state"] & (_FORCED_DRAIN | _NO_ADDRESS):
            continue
        role = row["name"].rstrip("0123456789")
        if role == "stable" and not passing.get(role):
            continue
        where = f"{row['name']}@{row['address']}:{row['port']}"
        listed = f"{row['address']}:{row['port']}" in set(passing.get(role, []))
        maint = bool(row["admin_state"] & _FORCED_MAINT)
        if not listed and not maint:
            swept["absent"].append(where)
            if where in (absent_before or []):
                set_state(backend, row["name"], "maint")
                swept["maint"].append(where)
        elif listed and maint:
            set_state(backend, row["name"], "ready")
            swept["ready"].append(where)
    return swept


def undrain(backend: str, address: str, port: int) -> str | None:
    """
    Send requests again to the server ADDRESS:PORT fills in BACKEND if it was drained
    (a release that stopped half-way gives it back); the slot's name, or None.

    CLI Example:

    .. code-block:: bash

        salt-call cabify_lb.undrain cabify 172.18.0.5 8080
    """
    found = server(backend, address, port)
    if found is None or not found["state"].startswith(("DRAIN", "MAINT")):
        return None
    set_state(backend, found["name"], "ready")
    return found["name"]


# --- figures -----------------------------------------------------------------------------


def role_counters(backend: str) -> dict[str, dict]:
    """
    Cumulative counters of BACKEND's servers summed by role (``stable``, ``canary``):
    requests sent to them, and errors (5xx answers, response errors and attempts that
    HAProxy retried on another server).

    CLI Example:

    .. code-block:: bash

        salt-call cabify_lb.role_counters cabify
    """
    return __utils__["cabify_analysis.role_counters"](_rows(backend))


def request_latencies(backend: str, since: float = 0) -> dict[str, list[int]]:
    """
    Response times (ms, HAProxy's Tr) of the requests BACKEND's servers answered since
    SINCE (epoch seconds), by role, from HAProxy's request log ring
    (``haproxy:request_log:ring``).

    CLI Example:

    .. code-block:: bash

        salt-call cabify_lb.request_latencies cabify
    """
    ring = __salt__["config.get"]("haproxy:request_log:ring", "requests")
    out: dict[str, list[int]] = {}
    for line in command(f"show events {ring}").splitlines():
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


def figures(
    backend: str, since: float | None = None, baseline: dict | None = None, target_share: float | None = None
) -> dict:
    """
    Live figures of BACKEND per role (``stable``, ``canary``): requests, errors, error
    rate, p50/p99 (ms), and the canary's measured share of the requests beside
    TARGET_SHARE. Counters count from BASELINE (a former result's ``counters``), latency
    from SINCE (epoch seconds); without them, everything HAProxy still holds. Also the
    canaries HAProxy holds DOWN (``canaries_out``).

    CLI Example:

    .. code-block:: bash

        salt-call cabify_lb.figures cabify
    """
    rows = _rows(backend)
    counters = __utils__["cabify_analysis.role_counters"](rows)
    latencies = request_latencies(backend, since or 0)
    out = __utils__["cabify_analysis.figures"](counters, baseline, latencies, target_share)
    out.update(counters=counters, at=time.time())
    out["canaries_out"] = __utils__["cabify_analysis.canaries_out"](rows)
    return out
