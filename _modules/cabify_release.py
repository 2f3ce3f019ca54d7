"""
Releases of the Cabify App's pool on this host: one at a time per pool (a Consul
session lock), each recorded in Consul KV, its progress sent as events
``cabify/release/<id>/<step>``.

.. code-block:: bash

    salt-call cabify_release.rolling 2 replicas=3
    salt-run cabify.status
    salt-run cabify.history

KV layout: ``cabify/locks/<pool>`` (held by the running release's session, its value
names the holder) and ``cabify/history/<pool>/<release id>`` (JSON record).
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from typing import Any

from salt.exceptions import CommandExecutionError

try:
    import consul

    HAS_CONSUL = True
except ImportError:
    HAS_CONSUL = False

log = logging.getLogger(__name__)

__virtualname__ = "cabify_release"

# Seconds: the release renews its session every LOCK_TTL / 3, so a release whose process
# dies (minion killed, host down) frees the pool within LOCK_TTL (Consul may allow twice).
LOCK_TTL = 30


def __virtual__():
    if not HAS_CONSUL:
        return (False, "cabify_release: py-consul is not installed in Salt's venv")
    return __virtualname__


def _consul():
    host = __salt__["config.get"]("consul:api:host", "127.0.0.1")
    port = __salt__["config.get"]("consul:config:ports:http", 8500)
    return consul.Consul(host=host, port=port)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def holder(pool: str = "cabify") -> dict | None:
    """
    Who holds POOL's release lock (``{"release", "minion", "version", "started"}``), or None.

    CLI Example:

    .. code-block:: bash

        salt-call cabify_release.holder
    """
    _, entry = _consul().kv.get(f"cabify/locks/{pool}")
    if not entry or not entry.get("Session") or not entry.get("Value"):
        return None
    return json.loads(entry["Value"])


def record(pool: str, release: dict) -> dict:
    """
    Write RELEASE (a dict with an ``id``) to POOL's history in Consul KV.

    CLI Example:

    .. code-block:: bash

        salt-call cabify_release.record cabify '{"id": "manual-1", "result": "note"}'
    """
    _consul().kv.put(f"cabify/history/{pool}/{release['id']}", json.dumps(release, sort_keys=True))
    return release


def rolling(version: str, pool: str = "cabify", **kwargs: Any) -> dict:
    """
    Run a rolling release of POOL to VERSION (see ``cabify.rolling`` for the settings)
    under POOL's release lock, recorded in history. Fails at once, naming the holder,
    when another release of POOL is running.

    CLI Example:

    .. code-block:: bash

        salt-call cabify_release.rolling 2 replicas=3 max_parallel=1
    """
    return _release("rolling", "cabify.rolling", version, pool, kwargs)


def canary(version: str, pool: str = "cabify", **kwargs: Any) -> dict:
    """
    Run a canary release of POOL to VERSION (see ``cabify_canary.run`` for the
    settings) under POOL's release lock, recorded in history. Fails at once, naming the
    holder, when another release of POOL is running.

    CLI Example:

    .. code-block:: bash

        salt-call cabify_release.canary 2 replicas=3 canary='{steps: [{weight: 20, pause: 30}]}'
    """
    return _release("canary", "cabify_canary.run", version, pool, kwargs)


def _release(strategy: str, function: str, version: str, pool: str, kwargs: dict) -> dict:
    kwargs = {k: v for k, v in kwargs.items() if not k.startswith("__")}
    client = _consul()
    release_id = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + secrets.token_hex(2)
    running = sorted({r["version"] for r in __salt__["cabify.replicas"](pool) if r["status"] == "running"})
    release = {
        "id": release_id,
        "pool": pool,
        "minion": __grains__.get("id"),
        "strategy": strategy,
        "from": running,
        "to": str(version),
        "started": _now(),
        "ended": None,
        "result": "running",
        "reason": "",
    }
    session = client.session.create(
        name=f"cabify release {release_id}", behavior="delete", ttl=LOCK_TTL, lock_delay=0
    )
    lock_value = json.dumps({k: release[k] for k in ("id", "minion", "strategy", "to", "started")})
    if not client.kv.put(f"cabify/locks/{pool}", lock_value, acquire=session):
        client.session.destroy(session)
        other = holder(pool) or {}
        raise CommandExecutionError(
            f"another release of pool {pool} is running: release {other.get('id')} to version "
            f"{other.get('to')} on {other.get('minion')}, started {other.get('started')}"
        )
    record(pool, release)
    __salt__["event.send"](f"cabify/release/{release_id}/start", release)
    renewing = threading.Event()
    threading.Thread(target=_keep_alive, args=(client, session, renewing), daemon=True).start()
    try:
        done = __salt__[function](version, pool=pool, release_id=release_id, **kwargs)
    except CommandExecutionError as err:
        release.update(result="failed", reason=str(err), ended=_now())
        raise
    else:
        # What changed, apart from the record's own started/ended times.
        release.update(result="succeeded", ended=_now(), replicas=done)
    finally:
        if release["result"] == "running":
            release.update(result="failed", reason="interrupted", ended=_now())
        renewing.set()
        record(pool, release)
        __salt__["event.send"](f"cabify/release/{release_id}/end", release)
        client.session.destroy(session)
    return release


def _keep_alive(client, session: str, done: threading.Event) -> None:
    """Renew the release's session until DONE; a failed renewal is retried."""
    while not done.wait(LOCK_TTL / 3):
        try:
            client.session.renew(session)
        except Exception as err:  # noqa: BLE001 - keep trying while the release runs
            log.warning("cabify release: renewing lock session %s failed: %s", session, err)
