"""
Watch this host's pools and fire when one needs healing.

.. code-block:: yaml

    beacons:
      cabify_docker:
        - disable_during_state_run: true
        - pools: [cabify, shop]     # optional: every pool with a container here

Events ``salt/beacon/<minion>/cabify_docker/<pool>/<action>``, with data ``{"pool",
"action", ...}``:

- ``die``: a replica died (killed, crashed: a non-zero exit code) and must be
  replaced, with ``name``, ``version`` and ``exit_code``; a replica stopped on purpose
  (drained, exit code 0) is no event;
- ``critical``: a running replica has been critical in Consul for 5 passes (``name``);
- ``drift``: Consul and Docker disagree (``unregistered``: running replicas not
  registered; ``stale``: registrations whose container is gone), or replicas died and
  were not replaced (``dead``); reported once it stayed 3 passes, and every 30
  passes while it stays;
- ``orphan``: what a release that died left behind (canary replicas, weights) while
  no release holds the pool's lock, for 3 passes (again every 30 while it stays).

An event is sent on a change, not on every pass: Docker's own event stream is read
from where the last pass stopped, and drift is reported once until it changes.
"""

from __future__ import annotations

import logging
import time

import salt.utils.beacons

try:
    import docker

    HAS_DOCKER = True
except ImportError:
    HAS_DOCKER = False

log = logging.getLogger(__name__)

__virtualname__ = "cabify_docker"

LABEL_POOL = "cabify.pool"
CRITICAL_PASSES = 5
DRIFT_PASSES = 3
ORPHAN_PASSES = 3
REPEAT_PASSES = 30


def __virtual__():
    if not HAS_DOCKER:
        return (False, "cabify_docker beacon: the docker library is not installed in Salt's venv")
    return __virtualname__


def validate(config) -> tuple[bool, str]:
    """The configuration is a list of one-key mappings; ``pools``, when set, a list of names."""
    if not isinstance(config, list):
        return False, "cabify_docker beacon: configuration must be a list of mappings"
    pools = salt.utils.beacons.list_to_dict(config).get("pools")
    if pools is not None and (not isinstance(pools, list) or not all(isinstance(p, str) for p in pools)):
        return False, "cabify_docker beacon: pools must be a list of pool names"
    return True, "valid"


def beacon(config) -> list[dict]:
    conf = salt.utils.beacons.list_to_dict(config)
    memory = __context__.setdefault(
        "cabify_docker", {"since": int(time.time()), "seen": set(), "critical": {}, "drift": {}, "orphan": {}}
    )
    try:
        found = _docker_events(memory, conf.get("pools"))
        replicas = __salt__["cabify_docker.replicas"]()
    except Exception as err:  # noqa: BLE001 - a beacon never raises
        log.warning("cabify_docker beacon: cannot read docker: %s", err)
        return []
    pools = conf.get("pools") or sorted({r["pool"] for r in replicas if r["pool"]})
    for pool in pools:
        try:
            registered = __salt__["cabify_consul.registrations"](pool)
        except Exception as err:  # noqa: BLE001 - a beacon never raises
            log.debug("cabify_docker beacon: consul not readable: %s", err)
            continue
        mine = [r for r in replicas if r["pool"] == pool]
        found.extend(_critical(pool, registered, memory))
        found.extend(_drift(pool, mine, registered, memory))
        found.extend(_orphan(pool, memory))
    return found


def _docker_events(memory: dict, pools: list[str] | None) -> list[dict]:
    """Deaths (non-zero exit codes) of the pools' containers since the last pass. A
    release starts and drains many replicas: those are no events, so that a release
    does not set off a heal a replica."""
    until = int(time.time()) + 1
    stream = docker.from_env(timeout=10).events(
        since=memory["since"],
        until=until,
        decode=True,
        filters={"type": "container", "label": LABEL_POOL, "event": ["die"]},
    )
    found = []
    for event in stream:
        key = (event.get("id"), event.get("Action"), event.get("timeNano"))
        attrs = event.get("Actor", {}).get("Attributes", {})
        pool = attrs.get(LABEL_POOL)
        if key in memory["seen"] or (pools and pool not in pools) or attrs.get("exitCode", "0") == "0":
            continue
        memory["seen"].add(key)
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
    # Events are read again from `since`: keep the last seconds' keys only.
    memory["since"] = until - 2
    if len(memory["seen"]) > 1000:
        memory["seen"] = set(list(memory["seen"])[-200:])
    return found


def _drift(pool: str, replicas: list[dict], registered: dict, memory: dict) -> list[dict]:
    """Running replicas missing from Consul (or registered at another address or port),
    this pool's registrations with no running replica, and replicas that died and were
    not replaced."""
    live = {r["name"]: (r["address"], r["port"]) for r in replicas if r["status"] == "running"}
    dead = tuple(sorted(r["name"] for r in replicas if r["status"] in ("exited", "dead") and r["exit_code"]))
    ours = {sid: (reg["address"], reg["port"]) for sid, reg in registered.items() if reg["pool"] == pool}
    # Registered where it no longer listens (a restarted replica got another host port).
    unregistered = tuple(sorted(n for n in live if ours.get(n) != live[n]))
    drift = (unregistered, tuple(sorted(set(ours) - set(live))), dead)
    before, passes = memory["drift"].get(pool, (None, 0))
    passes = passes + 1 if drift == before else 0
    memory["drift"][pool] = (drift, passes)
    # Reported once it has stayed DRIFT_PASSES passes (a release registers what it
    # starts a moment later: that is no drift), and again every REPEAT_PASSES passes
    # while it stays (a heal that a running release put off).
    if drift == ((), (), ()) or passes % REPEAT_PASSES != DRIFT_PASSES:
        return []
    event = {"tag": f"{pool}/drift", "pool": pool, "action": "drift"}
    return [{**event, "unregistered": drift[0], "stale": drift[1], "dead": drift[2]}]


def _critical(pool: str, registered: dict, memory: dict) -> list[dict]:
    """Replicas critical in Consul for CRITICAL_PASSES passes in a row, reported once."""
    counts = memory["critical"].setdefault(pool, {})
    events = []
    for name, reg in registered.items():
        if reg["status"] != "critical":
            counts.pop(name, None)
            continue
        counts[name] = counts.get(name, 0) + 1
        if counts[name] == CRITICAL_PASSES:
            events.append({"tag": f"{pool}/critical", "pool": pool, "action": "critical", "name": name})
    return events


def _orphan(pool: str, memory: dict) -> list[dict]:
    """What a dead release left behind, seen for ORPHAN_PASSES passes in a row, reported once."""
    try:
        orphaned = __salt__["cabify_release.needs_recovery"](pool)
    except Exception as err:  # noqa: BLE001 - a beacon never raises
        log.debug("cabify_docker beacon: release state not readable: %s", err)
        return []
    count = memory["orphan"][pool] = memory["orphan"].get(pool, 0) + 1 if orphaned else 0
    if count and count % REPEAT_PASSES == ORPHAN_PASSES:  # again every 30 passes while it stays
        return [{"tag": f"{pool}/orphan", "pool": pool, "action": "orphan"}]
    return []
