"""
This host's Consul agent: replica registrations, the pools' KV, and release locks
(sessions). One client, made in one place, with the agent's address and, when ACLs are
on, the token from ``consul:api:token``.

Consul is the truth for what serves: one service instance per replica (ID = container
name, service = pool name), tags and meta with pool, version and role, an HTTP check on
``/health``, and ``Weights.Passing`` for its share of the requests.

.. code-block:: bash

    salt-call cabify_consul.registrations cabify
    salt-call cabify_consul.kv_get cabify/weights/cabify
    salt-call cabify_consul.lock_holder cabify
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

from salt.exceptions import CommandExecutionError

try:
    import consul
    import requests

    HAS_CONSUL = True
except ImportError:
    HAS_CONSUL = False

log = logging.getLogger(__name__)

__virtualname__ = "cabify_consul"


def __virtual__():
    if not HAS_CONSUL:
        return (False, "cabify_consul: py-consul is not installed in Salt's venv")
    return __virtualname__


def _client():
    """The client of this host's agent with this host's token of now (one client per
    address and token: a token changed in pillar is used at once)."""
    reach = (
        __salt__["config.get"]("consul:api:host", "127.0.0.1"),
        __salt__["config.get"]("consul:config:ports:http", 8500),
        __salt__["config.get"]("consul:api:token", None),
    )
    clients = __context__.setdefault("cabify_consul.clients", {})
    if reach not in clients:
        clients[reach] = __utils__["cabify_kv.client"](*reach)
    return clients[reach]


def _call(what: str, func, *args, **kwargs):
    """Run a py-consul call; its errors become CommandExecutionError naming WHAT."""
    try:
        __utils__["cabify_failpoints.hit"]("consul.call")
        return func(*args, **kwargs)
    except (consul.ConsulException, requests.RequestException, OSError) as err:
        if __utils__["cabify_kv.denied"](err):
            roles = ", ".join(__grains__.get("roles") or []) or "none"
            raise CommandExecutionError(
                f"consul: {what}: {err}: Consul refuses this host's token (its roles: {roles}; pillar "
                "consul:api:token, from the master's ext_pillar cabify_consul_secrets): unknown, "
                "expired or not allowed this; salt-run cabify_acl.ensure makes the tokens right"
            ) from err
        raise CommandExecutionError(f"consul: {what}: {err}") from err


def desired_request(value: Any) -> dict | None:
    """
    What a desired-version VALUE (``cabify/desired/<pool>``) asks for: its version, and
    strategy, canary and release settings when it names them; None for a mapping
    without a version (``cabify_kv.desired_request``, for the cabify_desired beacon).

    CLI Example:

    .. code-block:: bash

        salt-call cabify_consul.desired_request '{version: "3", strategy: canary}'
    """
    return __utils__["cabify_kv.desired_request"](value)


# --- registrations -----------------------------------------------------------------------


def register(
    replica: dict,
    service: str,
    weight: int | None = None,
    status: str | None = None,
    deregister_after: str = "30s",
) -> dict:
    """
    Register REPLICA (a dict from ``cabify_docker.replicas``) as an instance of SERVICE:
    its address and port, tags and meta with pool, version and role, an HTTP check on
    /health every second. WEIGHT is its HAProxy weight (1-256, carried by
    ``Weights.Passing``); STATUS starts its check passing (a re-registration for a
    weight change must not take a passing replica out of service).

    CLI Example:

    .. code-block:: bash

        salt-call cabify_consul.register \
          '{name: shop-2-a1b2c3, address: 172.18.0.5, port: 80, pool: shop, version: "2", role: stable}' shop
    """
    check = consul.Check.http(
        f"http://{replica['address']}:{replica['port']}/health",
        "1s",
        timeout="1s",
        deregister=deregister_after,
    )
    if status in ("passing", "warning", "critical"):
        check["Status"] = status
    weights = None
    if weight is not None:
        weights = {"Passing": __utils__["cabify_weights.consul_passing"](weight), "Warning": 1}
    _call(
        f"registering {replica['name']}",
        _client().agent.service.register,
        service,
        service_id=replica["name"],
        address=replica["address"],
        port=replica["port"],
        tags=[replica["role"], f"v{replica['version']}"],
        meta={"pool": replica["pool"], "version": str(replica["version"]), "role": replica["role"]},
        check=check,
        weights=weights,
    )
    return replica


def deregister(name: str) -> bool:
    """
    Remove the registration of instance NAME from this host's agent; True if there was one.

    CLI Example:

    .. code-block:: bash

        salt-call cabify_consul.deregister cabify-2-a1b2c3
    """
    agent = _client().agent
    if name not in _call("listing services", agent.services):
        return False
    _call(f"deregistering {name}", agent.service.deregister, name)
    return True


def catalog_orphans(service: str, remove: bool = False) -> list[str]:
    """
    The IDs of SERVICE's instances that the catalog holds for this host's node and its
    agent does not know (with REMOVE, removed from the catalog). The agent removes such
    an entry itself with the token it was registered with; once that token is gone (a
    rotation pruned it before the agent synced a deregistration, or the agent forgot it
    on a restart) it tries the anonymous token, which may not, and the entry stays
    passing in DNS for good. This host's token may (``service:write`` on the pools).

    CLI Example:

    .. code-block:: bash

        salt-call cabify_consul.catalog_orphans cabify remove=True
    """
    client = _client()
    node = __salt__["config.get"]("consul:config:node_name", None) or __grains__.get("nodename")
    local = _call("listing services", client.agent.services)
    _, entries = _call(f"listing {service} in the catalog", client.catalog.service, service)
    orphans = sorted(e["ServiceID"] for e in entries if e.get("Node") == node and e["ServiceID"] not in local)
    for sid in orphans if remove else []:
        # Raw: py-consul's catalog.deregister adds a body field Consul 1.8 refuses.
        _call(
            f"removing {sid} of {node} from the catalog",
            client.http.put,
            consul.callback.CB.boolean(),
            "/v1/catalog/deregister",
            headers=client.prepare_headers(),
            data=json.dumps({"Node": node, "ServiceID": sid}),
        )
        log.warning("cabify_consul: %s of node %s was in the catalog only: removed", sid, node)
    return orphans


def registrations(service: str) -> dict[str, dict]:
    """
    This agent's instances of SERVICE by ID: address, port, tags, pool, version, role,
    weight (Passing) and the worst status of their checks.

    CLI Example:

    .. code-block:: bash

        salt-call cabify_consul.registrations cabify
    """
    agent = _client().agent
    checks = _call("listing checks", agent.checks)
    found = {}
    for sid, svc in _call("listing services", agent.services).items():
        if svc.get("Service") != service:
            continue
        states = [c["Status"] for c in checks.values() if c.get("ServiceID") == sid]
        worst = next((s for s in ("critical", "warning") if s in states), "passing" if states else "none")
        meta = svc.get("Meta") or {}
        found[sid] = {
            "address": svc.get("Address"),
            "port": svc.get("Port"),
            "tags": svc.get("Tags", []),
            "pool": meta.get("pool"),
            "version": meta.get("version"),
            "role": meta.get("role"),
            "passing_weight": (svc.get("Weights") or {}).get("Passing"),
            "status": worst,
        }
    return found


def passing(service: str) -> dict[str, list[str]]:
    """
    The ``address:port`` of SERVICE's instances whose checks pass, anywhere in the
    cluster, by role tag (``stable``, ``canary``): what Consul's DNS gives.

    CLI Example:

    .. code-block:: bash

        salt-call cabify_consul.passing cabify
    """
    _, entries = _call(
        f"listing passing instances of {service}", _client().health.service, service, passing=True
    )
    found: dict[str, list[str]] = {}
    for entry in entries:
        svc = entry["Service"]
        address = svc.get("Address") or entry["Node"]["Address"]
        for tag in svc.get("Tags") or []:
            found.setdefault(tag, []).append(f"{address}:{svc['Port']}")
    return found


# --- KV ------------------------------------------------------------------------------------


def kv_get(key: str) -> Any:
    """
    The value at KEY (JSON decoded when it is JSON), or None.

    CLI Example:

    .. code-block:: bash

        salt-call cabify_consul.kv_get cabify/weights/cabify
    """
    _, entry = _call(f"reading {key}", _client().kv.get, key)
    return __utils__["cabify_kv.decode"](entry.get("Value")) if entry else None


def kv_tree(prefix: str, consistent: bool = False) -> dict[str, Any]:
    """
    Every key under PREFIX with its decoded value. CONSISTENT reads go through the
    leader once it has applied its whole log: a Consul that has just restarted may
    otherwise answer, for a moment, with values older than those it answered before.

    CLI Example:

    .. code-block:: bash

        salt-call cabify_consul.kv_tree cabify/desired/ consistent=True
    """
    extra = {"consistency": "consistent"} if consistent else {}
    _, entries = _call(f"reading {prefix}", _client().kv.get, prefix, recurse=True, **extra)
    return {e["Key"]: __utils__["cabify_kv.decode"](e.get("Value")) for e in entries or []}


def kv_put(key: str, value: Any) -> bool:
    """
    Write VALUE at KEY as JSON.

    CLI Example:

    .. code-block:: bash

        salt-call cabify_consul.kv_put cabify/desired/cabify '"2"'
    """
    return bool(_call(f"writing {key}", _client().kv.put, key, __utils__["cabify_kv.encode"](value)))


def kv_delete(key: str) -> bool:
    """
    Delete KEY (nothing happens when it is absent).

    CLI Example:

    .. code-block:: bash

        salt-call cabify_consul.kv_delete cabify/weights/cabify
    """
    return bool(_call(f"deleting {key}", _client().kv.delete, key))


# --- locks -------------------------------------------------------------------------------


def lock_acquire(key: str, holder: dict, ttl: int = 30) -> str | None:
    """
    Take the lock at KEY with a new session of TTL seconds (behaviour delete, no lock
    delay) and HOLDER as its value. The session id, or None when another session holds
    it (the session made for the attempt is destroyed).

    CLI Example:

    .. code-block:: bash

        salt-call cabify_consul.lock_acquire cabify/locks/cabify '{id: manual}'
    """
    client = _client()
    session = _call(
        "creating a lock session",
        client.session.create,
        name=f"lock {key} {holder.get('id', '')}".strip(),
        behavior="delete",
        ttl=int(ttl),
        lock_delay=0,
    )
    taken = _call(f"taking {key}", client.kv.put, key, __utils__["cabify_kv.encode"](holder), acquire=session)
    if not taken:
        _call("destroying a session", client.session.destroy, session)
        return None
    return session


def lock_holder(key: str) -> dict | None:
    """
    The value of the lock at KEY with its ``session``, while a session holds it; None
    when it is free.

    CLI Example:

    .. code-block:: bash

        salt-call cabify_consul.lock_holder cabify/locks/cabify
    """
    _, entry = _call(f"reading {key}", _client().kv.get, key)
    if not entry or not entry.get("Session"):
        return None
    value = __utils__["cabify_kv.decode"](entry.get("Value"))
    return {**(value if isinstance(value, dict) else {}), "session": entry["Session"]}


def lock_held(key: str, session: str) -> bool:
    """
    True while SESSION holds the lock at KEY: what a release checks before each step.

    CLI Example:

    .. code-block:: bash

        salt-call cabify_consul.lock_held cabify/locks/cabify 1f0e...
    """
    holder = lock_holder(key)
    return bool(holder and holder["session"] == session)


def session_renew(session: str) -> bool:
    """
    Renew SESSION's TTL; False when Consul no longer knows it (it expired or was
    destroyed: its locks are gone).

    CLI Example:

    .. code-block:: bash

        salt-call cabify_consul.session_renew 1f0e...
    """
    try:
        return bool(_client().session.renew(session))
    except consul.NotFound:
        return False
    except (consul.ConsulException, requests.RequestException, OSError) as err:
        raise CommandExecutionError(f"consul: renewing session {session}: {err}") from err


def lock_release(key: str, session: str) -> None:
    """
    Let go of the lock at KEY that SESSION holds: the session is destroyed, and with
    it the key (sessions are made with behaviour delete).

    CLI Example:

    .. code-block:: bash

        salt-call cabify_consul.lock_release cabify/locks/cabify 1f0e...
    """
    _call(f"releasing {key}", _client().session.destroy, session)


# --- failed nodes -----------------------------------------------------------------------------

# When this server first saw each failed node (reap_failed_nodes runs in a new process
# each time, from the minion's schedule).
FAILED_SINCE = "/var/cache/cabify/consul-failed-since.json"
# Serf's member status of a node that stopped answering (left ones are 3).
_FAILED = 4


def reap_failed_nodes(after: float = 30) -> list[str]:
    """
    Force out of the cluster the nodes that have been failed (a host that died without
    leaving) for AFTER seconds: Consul then removes their services from the catalog.
    Until then their instances stay in the catalog as critical, and a node that comes
    back in time keeps them. Returns the nodes forced out. Run on servers, from the
    minion's schedule (pillar ``schedule``).

    CLI Example:

    .. code-block:: bash

        salt-call cabify_consul.reap_failed_nodes after=30
    """
    client = _client()
    # py-consul's agent.members() sends no token: Consul would filter every node out.
    members = _call(
        "listing members",
        client.http.get,
        consul.callback.CB.json(),
        "/v1/agent/members",
        headers=client.prepare_headers(),
    )
    failed = {m["Name"] for m in members if m.get("Status") == _FAILED}
    try:
        with open(FAILED_SINCE, encoding="utf-8") as file:
            seen = json.load(file)
    except (OSError, ValueError):
        seen = {}
    seen, reap = __utils__["cabify_plan.nodes_to_reap"](failed, seen, time.time(), float(after))
    for node in reap:
        _call(f"forcing {node} out", _client().agent.force_leave, node)
        log.warning("cabify: consul node %s failed %ss ago: forced out of the catalog", node, after)
        seen.pop(node, None)
    os.makedirs(os.path.dirname(FAILED_SINCE), exist_ok=True)
    with open(FAILED_SINCE + ".new", "w", encoding="utf-8") as file:
        json.dump(seen, file)
    os.replace(FAILED_SINCE + ".new", FAILED_SINCE)
    return reap
