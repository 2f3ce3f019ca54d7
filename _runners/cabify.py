"""
The pools' releases as Consul records them, read on the master; and an operator's
promote or abort of a running canary.

.. code-block:: bash

    salt-run cabify.status --out=json          # every pool
    salt-run cabify.status shop --out=json
    salt-run cabify.history cabify limit=5 --out=json
    salt-run cabify.promote                    # the running canary (name the pool if several run)
    salt-run cabify.abort shop

Consul is reached at ``cabify_consul_host``/``cabify_consul_port`` of the master's
configuration (default 127.0.0.1:8500), with ``cabify_consul_token`` when ACLs are on.
What runs on each app host (``cabify_app_target``, default ``G@roles:app``) is asked of
the hosts themselves, through Salt (``hosts``); everything else comes from the Consul
the master reaches. On this machine with ``make fleet`` that is the all-in-one host's
own Consul, not the fleet's: a release controller on the master that reads the fleet's
Consul is the next step.
"""

from __future__ import annotations

from typing import Any

import salt.client

try:
    import consul  # noqa: F401 - checked by __virtual__; the client comes from cabify_kv

    HAS_CONSUL = True
except ImportError:
    HAS_CONSUL = False

__virtualname__ = "cabify"


def __virtual__():
    if not HAS_CONSUL:
        return (False, "cabify runner: py-consul is not installed in Salt's venv")
    return __virtualname__


def _kv(func: str, *args) -> Any:
    return __utils__[f"cabify_kv.{func}"](*args)


def _client():
    return _kv(
        "client",
        __opts__.get("cabify_consul_host", "127.0.0.1"),
        __opts__.get("cabify_consul_port", 8500),
        __opts__.get("cabify_consul_token"),
    )


def _get(client, key: str) -> Any:
    _, entry = client.kv.get(key)
    return _kv("decode", entry.get("Value")) if entry else None


def _holder(client, pool: str) -> dict | None:
    _, lock = client.kv.get(_kv("lock", pool))
    if not lock or not lock.get("Session"):
        return None
    value = _kv("decode", lock.get("Value"))
    return value if isinstance(value, dict) else {}


def _pools(client) -> list[str]:
    """Every pool Consul has a record of: a history, a lock, a canary or a service."""
    _, keys = client.kv.get(_kv("root") + "/", keys=True)
    found = set()
    for key in keys or []:
        for kind in ("history", "locks", "canary", "weights", "desired"):
            pool = _kv("pool_of", key, kind)
            if pool:
                found.add(pool)
    return sorted(found)


def history(pool: str, limit: int = 20) -> list[dict]:
    """
    The last LIMIT releases of POOL, newest first. A release whose process died
    without an end record (its lock expired) shows as ``interrupted``.

    CLI Example:

    .. code-block:: bash

        salt-run cabify.history cabify --out=json
    """
    client = _client()
    _, entries = client.kv.get(_kv("history", pool), recurse=True)
    releases = [r for r in (_kv("decode", e.get("Value")) for e in entries or []) if isinstance(r, dict)]
    holder = _holder(client, pool) or {}
    for release in releases:
        if release.get("result") == "running" and release["id"] != holder.get("id"):
            release.update(result="interrupted", reason="its process ended without an end record")
    return sorted(releases, key=lambda r: r["id"], reverse=True)[: int(limit)]


def hosts(pool: str | None = None, timeout: int = 10) -> dict[str, Any]:
    """
    What each app host runs, asked of the hosts: by pool and version, the replicas
    running and how many pass their check. A host that does not answer within TIMEOUT
    seconds says so.

    CLI Example:

    .. code-block:: bash

        salt-run cabify.hosts --out=json
        salt-run cabify.hosts shop
    """
    target = __opts__.get("cabify_app_target", "G@roles:app")
    client = salt.client.get_local_client(__opts__["conf_file"])
    try:
        expected = client.gather_minions(target, "compound")
        answers = client.cmd(
            target, "cabify_pool.summary", [pool] if pool else [], tgt_type="compound", timeout=timeout
        )
    finally:
        client.destroy()
    found: dict[str, Any] = {host: "no answer" for host in expected}
    found.update(answers)
    return dict(sorted(found.items()))


def status(pool: str | None = None) -> dict:
    """
    POOL now (every pool without it): the running release (lock holder) if any, the
    last release, the instances registered in Consul by version and health, what each
    app host runs (``hosts``: by version, running and passing), the canary's live state
    and the weights in force.

    CLI Example:

    .. code-block:: bash

        salt-run cabify.status --out=json
        salt-run cabify.status shop --out=json
    """
    client = _client()
    per_host = hosts(pool)
    if pool is not None:
        return _status(client, pool, per_host)
    here = {name for found in per_host.values() if isinstance(found, dict) for name in found}
    return {name: _status(client, name, per_host) for name in sorted(set(_pools(client)) | here)}


def _status(client, pool: str, per_host: dict) -> dict:
    _, nodes = client.health.service(pool)
    instances: dict[str, dict[str, int]] = {}
    for node in nodes:
        version = (node["Service"].get("Meta") or {}).get("version", "?")
        states = [c["Status"] for c in node["Checks"] if c.get("ServiceID")]
        health = "passing" if states and all(s == "passing" for s in states) else "not passing"
        instances.setdefault(version, {}).setdefault(health, 0)
        instances[version][health] += 1
    last = history(pool, limit=1)
    return {
        "pool": pool,
        "release_running": _holder(client, pool),
        "last_release": last[0] if last else None,
        "instances": instances,
        "hosts": {
            host: found.get(pool, {}) if isinstance(found, dict) else found
            for host, found in per_host.items()
        },
        "canary": _get(client, _kv("canary_state", pool)),
        "weights": _get(client, _kv("weights", pool)),
    }


def _command(pool: str | None, command: str) -> dict:
    client = _client()
    canaries = {
        name: holder
        for name in ([pool] if pool else _pools(client))
        if (holder := _holder(client, name)) and holder.get("strategy") == "canary"
    }
    if not canaries:
        where = f"pool {pool}" if pool else "any pool"
        return {"pool": pool, "result": False, "comment": f"no canary release of {where} is running"}
    if len(canaries) > 1:
        return {
            "pool": None,
            "result": False,
            "comment": f"canaries of several pools run ({', '.join(sorted(canaries))}): name the pool",
        }
    ((name, holder),) = canaries.items()
    client.kv.put(_kv("canary_command", name), _kv("encode", command))
    return {
        "pool": name,
        "result": True,
        "release": holder.get("id"),
        "comment": f"{command} sent to {holder.get('id')}",
    }


def promote(pool: str | None = None) -> dict:
    """
    Promote the running canary of POOL (the only one running, without POOL) now: the
    steps left are skipped and the new version is rolled out to the whole pool.

    CLI Example:

    .. code-block:: bash

        salt-run cabify.promote
        salt-run cabify.promote shop
    """
    return _command(pool, "promote")


def abort(pool: str | None = None) -> dict:
    """
    Abort the running canary of POOL (the only one running, without POOL) now: its
    share goes to nothing, its replicas are drained and removed; the stable replicas
    keep serving.

    CLI Example:

    .. code-block:: bash

        salt-run cabify.abort
        salt-run cabify.abort shop
    """
    return _command(pool, "abort")
