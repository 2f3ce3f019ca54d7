"""
Read the Cabify App's release record from Consul, on the master.

.. code-block:: bash

    salt-run cabify.status --out=json
    salt-run cabify.history limit=5 --out=json
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
    _, entries = _consul().kv.get(f"cabify/history/{pool}/", recurse=True)
    releases = [json.loads(e["Value"]) for e in entries or [] if e.get("Value")]
    return sorted(releases, key=lambda r: r["id"], reverse=True)[: int(limit)]


def status(pool: str = "cabify") -> dict:
    """
    POOL now: the running release (lock holder) if any, the last release, and the
    instances registered in Consul by version and health.

    CLI Example:

    .. code-block:: bash

        salt-run cabify.status --out=json
    """
    client = _consul()
    _, lock = client.kv.get(f"cabify/locks/{pool}")
    running = json.loads(lock["Value"]) if lock and lock.get("Session") and lock.get("Value") else None
    _, nodes = client.health.service(pool)
    instances: dict[str, dict[str, int]] = {}
    for node in nodes:
        version = node["Service"].get("Meta", {}).get("version", "?")
        states = [c["Status"] for c in node["Checks"] if c.get("ServiceID")]
        health = "passing" if states and all(s == "passing" for s in states) else "not passing"
        instances.setdefault(version, {}).setdefault(health, 0)
        instances[version][health] += 1
    last = history(pool, limit=1)
    return {
        "pool": pool,
        "release_running": running,
        "last_release": last[0] if last else None,
        "instances": instances,
    }
