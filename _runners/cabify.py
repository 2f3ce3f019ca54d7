"""
Read the Cabify App's release record from Consul, on the master.

.. code-block:: bash

    salt-run cabify.status --out=json
    salt-run cabify.history limit=5 --out=json
    salt-run cabify.promote     # a running canary: promote now
    salt-run cabify.abort       # a running canary: abort now
"""

from __future__ import annotations

import json

try:
    import consul

    HAS_CONSUL = True
except ImportError:
    HAS_CONSUL = False

__virtualname__ = "cabify"


def __virtual__():
    if not HAS_CONSUL:
        return (False, "cabify runner: py-consul is not installed in Salt's venv")
    return __virtualname__


def _consul():
    return consul.Consul(host=__opts__.get("cabify_consul_host", "127.0.0.1"), port=8500)


def history(pool: str = "cabify", limit: int = 20) -> list[dict]:
    """
    The last LIMIT releases of POOL, newest first.

    CLI Example:

    .. code-block:: bash

        salt-run cabify.history --out=json
    """
    client = _consul()
    _, entries = client.kv.get(f"cabify/history/{pool}/", recurse=True)
    releases = [json.loads(e["Value"]) for e in entries or [] if e.get("Value")]
    holder = _holder(client, pool) or {}
    for release in releases:
        # A release whose process died never wrote its end: its lock expired.
        if release.get("result") == "running" and release["id"] != holder.get("id"):
            release.update(result="interrupted", reason="its process ended without an end record")
    return sorted(releases, key=lambda r: r["id"], reverse=True)[: int(limit)]


def _holder(client, pool: str) -> dict | None:
    _, lock = client.kv.get(f"cabify/locks/{pool}")
    return json.loads(lock["Value"]) if lock and lock.get("Session") and lock.get("Value") else None


def status(pool: str = "cabify") -> dict:
    """
    POOL now: the running release (lock holder) if any, the last release, and the
    instances registered in Consul by version and health.

    CLI Example:

    .. code-block:: bash

        salt-run cabify.status --out=json
    """
    client = _consul()
    running = _holder(client, pool)
    _, nodes = client.health.service(pool)
    instances: dict[str, dict[str, int]] = {}
    for node in nodes:
        version = node["Service"].get("Meta", {}).get("version", "?")
        states = [c["Status"] for c in node["Checks"] if c.get("ServiceID")]
        health = "passing" if states and all(s == "passing" for s in states) else "not passing"
        instances.setdefault(version, {}).setdefault(health, 0)
        instances[version][health] += 1
    last = history(pool, limit=1)
    _, canary = client.kv.get(f"cabify/canary/{pool}/state")
    return {
        "pool": pool,
        "release_running": running,
        "last_release": last[0] if last else None,
        "instances": instances,
        # The last canary: phase, step, weight and the live figures of both roles.
        "canary": json.loads(canary["Value"]) if canary and canary.get("Value") else None,
    }


def _command(pool: str, command: str) -> dict:
    client = _consul()
    running = _holder(client, pool)
    if not running or running.get("strategy") != "canary":
        return {"pool": pool, "result": False, "comment": f"no canary release of pool {pool} is running"}
    client.kv.put(f"cabify/canary/{pool}/command", json.dumps(command))
    return {
        "pool": pool,
        "result": True,
        "release": running["id"],
        "comment": f"{command} sent to {running['id']}",
    }


def promote(pool: str = "cabify") -> dict:
    """
    Promote POOL's running canary now: the steps left are skipped and the new version
    is rolled out to the whole pool.

    CLI Example:

    .. code-block:: bash

        salt-run cabify.promote
    """
    return _command(pool, "promote")


def abort(pool: str = "cabify") -> dict:
    """
    Abort POOL's running canary now: its share goes to 0, its replicas are drained and
    removed; the stable pool keeps serving.

    CLI Example:

    .. code-block:: bash

        salt-run cabify.abort
    """
    return _command(pool, "abort")
