"""
Watch the Cabify App's containers and fire when the pool needs healing.

.. code-block:: yaml

    beacons:
      cabify_docker:
        - pool: cabify

Events (``salt/beacon/<minion>/cabify_docker/<pool>/<action>``), with data
``{"pool", "name", "version", "action", "exit_code"}``:

- ``start``: a replica started (it must be registered in Consul);
- ``die``: a replica stopped or was killed (it must be replaced or forgotten);
- ``critical``: a running replica has been critical in Consul for a few passes;
- ``drift``: Consul and Docker disagree (a running replica not registered, or a
  registration whose container is gone).

An event is sent on a change, not on every pass: Docker's own event stream is read
from where the last pass stopped.
"""

from __future__ import annotations

import logging
import time

try:
    import docker

    HAS_DOCKER = True
except ImportError:
    HAS_DOCKER = False

log = logging.getLogger(__name__)

__virtualname__ = "cabify_docker"


def __virtual__():
    if not HAS_DOCKER:
        return (False, "cabify_docker beacon: the docker library is not installed in Salt's venv")
    return __virtualname__


def _config(config) -> dict:
    if isinstance(config, list):
        merged: dict = {}
        for item in config:
            merged.update(item)
        return merged
    return dict(config or {})


def validate(config) -> tuple[bool, str]:
    """The configuration is a list of one-key mappings; ``pool`` must be a string."""
    if not isinstance(config, (list, dict)):
        return False, "cabify_docker beacon: configuration must be a list of mappings"
    conf = _config(config)
    if not isinstance(conf.get("pool", "cabify"), str):
        return False, "cabify_docker beacon: pool must be a string"
    return True, "valid"


def beacon(config) -> list[dict]:
    conf = _config(config)
    pool = conf.get("pool", "cabify")
    memory = __context__.setdefault(
        "cabify_docker", {"since": int(time.time()), "seen": set(), "critical": {}}
    )
    until = int(time.time()) + 1
    found = []
    try:
        client = docker.from_env(timeout=10)
        stream = client.events(
            since=memory["since"],
            until=until,
            decode=True,
            filters={"type": "container", "label": f"cabify.pool={pool}", "event": ["start", "die"]},
        )
        for event in stream:
            key = (event.get("id"), event.get("Action"), event.get("timeNano"))
            if key in memory["seen"]:
                continue
            memory["seen"].add(key)
            attrs = event.get("Actor", {}).get("Attributes", {})
            found.append(
                {
                    "tag": f"{pool}/{event['Action']}",
                    "pool": pool,
                    "action": event["Action"],
                    "name": attrs.get("name"),
                    "version": attrs.get("cabify.version"),
                    "exit_code": attrs.get("exitCode"),
                }
            )
    except docker.errors.DockerException as err:
        log.warning("cabify_docker beacon: cannot read docker events: %s", err)
        return []
    # Keep the last seconds' keys only: events are read again from `since`.
    memory["since"] = until - 2
    if len(memory["seen"]) > 1000:
        memory["seen"] = set(list(memory["seen"])[-200:])
    found.extend(_critical(pool, memory))
    found.extend(_drift(pool, memory))
    return found


def _drift(pool: str, memory: dict) -> list[dict]:
    """Running replicas missing from Consul, or registrations with no running replica."""
    try:
        running = {r["name"] for r in __salt__["cabify.replicas"](pool, all=False)}
        registered = {
            sid for sid, reg in __salt__["cabify.registrations"](pool).items() if reg["pool"] == pool
        }
    except Exception as err:  # noqa: BLE001 - a beacon never raises
        log.debug("cabify_docker beacon: drift not readable: %s", err)
        return []
    drift = (tuple(sorted(running - registered)), tuple(sorted(registered - running)))
    if drift == memory.get("drift") or drift == ((), ()):
        memory["drift"] = drift
        return []
    memory["drift"] = drift
    return [
        {"tag": f"{pool}/drift", "pool": pool, "action": "drift", "unregistered": drift[0], "stale": drift[1]}
    ]


def _critical(pool: str, memory: dict, passes: int = 5) -> list[dict]:
    """Replicas critical in Consul for PASSES passes in a row, reported once."""
    try:
        registered = __salt__["cabify.registrations"](pool)
    except Exception as err:  # noqa: BLE001 - a beacon never raises
        log.debug("cabify_docker beacon: consul not readable: %s", err)
        return []
    events = []
    for name, reg in registered.items():
        if reg["status"] != "critical":
            memory["critical"].pop(name, None)
            continue
        memory["critical"][name] = memory["critical"].get(name, 0) + 1
        if memory["critical"][name] == passes:
            events.append({"tag": f"{pool}/critical", "pool": pool, "action": "critical", "name": name})
    return events
