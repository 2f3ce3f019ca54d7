"""
One host's share of a pool: its replicas (Docker), their registrations (Consul) and
their servers in HAProxy, kept in step. Plan, converge, drain, heal, weights.

A pool is named once: its containers carry the label ``cabify.pool=<pool>``, its
Consul service and HAProxy backend are named after it, and its bridge network too
unless the pool's ``network`` says otherwise.

.. code-block:: bash

    salt-call cabify_pool.plan cabify 2 replicas=3
    salt-call cabify_pool.converge cabify 2 replicas=3
    salt-call cabify_pool.reconcile cabify
    salt-call cabify_pool.heal

A host with the ``lb`` role (or no roles grain: the all-in-one host) has the pool's
HAProxy beside its replicas: health counts once HAProxy has a replica UP, and a drain
waits until HAProxy shows no session on it. An app host of the fleet has none: health
is Consul's check, and a drain waits until the replica has had no request for
``DRAIN_QUIET`` seconds (the LBs' DNS has dropped it), up to ``drain_timeout``.

Every change of a host's pool holds the pool's host lock (``/run/cabify/<pool>.lock``),
so that a heal never undoes a converge or a release half-way; a release holds it for
its whole run. A release passes its
``fence`` (lock key and session); each step first checks that the release still holds
its Consul lock, and stops when it lost it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import urllib.error
import urllib.request
from typing import Any

import salt.utils.dictupdate
import salt.utils.yaml
from salt.exceptions import CommandExecutionError

log = logging.getLogger(__name__)

__virtualname__ = "cabify_pool"

# How long a replica that was just started gets to answer /health before it is
# registered anyway (critical until Consul's own check passes).
HEALTH_PROBE_TIMEOUT = 2.0
# On a host without its own LB: seconds without a request after which a deregistered
# replica is taken as left by every LB (their resolvers ask Consul every 250 ms).
DRAIN_QUIET = 1.0


def __virtual__():
    needed = ("cabify_docker.replicas", "cabify_consul.registrations", "cabify_lb.servers")
    missing = [f.split(".")[0] for f in needed if f not in __salt__]
    if missing:
        return (False, f"cabify_pool: the modules {', '.join(missing)} are not loaded (docker, py-consul?)")
    return __virtualname__


def _docker(func: str, *args, **kwargs):
    return __salt__[f"cabify_docker.{func}"](*args, **kwargs)


def _consul(func: str, *args, **kwargs):
    return __salt__[f"cabify_consul.{func}"](*args, **kwargs)


def _lb(func: str, *args, **kwargs):
    return __salt__[f"cabify_lb.{func}"](*args, **kwargs)


def local_lb() -> bool:
    """
    True if this host runs the pools' HAProxy (role ``lb``, or no ``roles`` grain).

    CLI Example:

    .. code-block:: bash

        salt-call cabify_pool.local_lb
    """
    roles = __grains__.get("roles")
    return not roles or "lb" in roles


def _failpoint(name: str) -> None:
    __utils__["cabify_failpoints.hit"](name)


def _setting(pool: str, key: str, default: Any = None) -> Any:
    return __salt__["config.get"](f"cabify:pools:{pool}:{key}", default)


@contextlib.contextmanager
def _host_lock(pool: str, fence: dict | None = None, timeout: float = 300):
    """The pool's host lock (see ``_utils/cabify_hostlock.py``), unless FENCE says a
    release that holds it already is the caller."""
    if fence:
        yield
        return
    with __utils__["cabify_hostlock.hold"](pool, timeout):
        yield


def check_fence(fence: dict | None) -> None:
    """
    Raise when the release that FENCE (``{"key", "session", "release"}``) belongs to no
    longer holds its lock: it must not touch the pool again. Nothing without a fence.

    CLI Example:

    .. code-block:: bash

        salt-call cabify_pool.check_fence '{key: cabify/locks/cabify, session: 1f0e..., release: r1}'
    """
    if not fence:
        return
    if not _consul("lock_held", fence["key"], fence["session"]):
        raise CommandExecutionError(
            f"release {fence.get('release')} lost its lock {fence['key']} (its session ended): "
            "it stopped and leaves the pool to whoever holds the lock now"
        )


def replica_env(env: dict | None, drain_timeout: float) -> dict:
    """
    The environment every replica of a pool gets: ENV plus ``DRAIN_TIMEOUT``, the cap
    on the app's own drain after SIGTERM.

    CLI Example:

    .. code-block:: bash

        salt-call cabify_pool.replica_env '{LOG_LEVEL: info}' 5
    """
    return {**{str(k): str(v) for k, v in (env or {}).items()}, "DRAIN_TIMEOUT": f"{float(drain_timeout):g}"}


def running(pool: str) -> list[dict]:
    """
    The running replicas of POOL on this host.

    CLI Example:

    .. code-block:: bash

        salt-call cabify_pool.running cabify
    """
    return [r for r in _docker("replicas", pool) if r["status"] == "running"]


# --- weights -----------------------------------------------------------------------------


def weights(pool: str) -> dict | None:
    """
    POOL's per-replica weights while a release shares out requests
    (``{"spec", "new", "old", "asked", "share"}``: replicas of spec ``spec`` get weight
    ``new``, the others ``old``), or None (every replica weight 1).

    CLI Example:

    .. code-block:: bash

        salt-call cabify_pool.weights cabify
    """
    current = _consul("kv_get", __utils__["cabify_kv.weights"](pool))
    return current if isinstance(current, dict) and "new" in current and "old" in current else None


def weight_of(replica: dict, current: dict | None) -> int | None:
    """
    The HAProxy weight REPLICA gets under weights CURRENT (None: Consul's default).

    CLI Example:

    .. code-block:: bash

        salt-call cabify_pool.weight_of '{spec: abc}' '{spec: abc, new: 3, old: 4}'
    """
    if not current:
        return None
    return int(current["new"] if replica.get("spec") == current.get("spec") else current["old"])


def set_weights(
    pool: str,
    share: float,
    spec: str,
    release: str | None = None,
    counts: dict | None = None,
    timeout: float = 20,
) -> dict:
    """
    Give POOL's replicas of SPEC SHARE percent of the requests (0 < SHARE < 100) beside
    the others: store the per-replica weights, re-register every running replica with
    its own, and wait until HAProxy serves with them (no reload). COUNTS
    (``{"new", "old"}``) sizes the weights for replicas about to start; by default the
    running ones are counted. Returns the weights with the share they give (``share``)
    beside the one asked (``asked``): weights stop at 256, so a share near 0 or 100
    may be out of reach.

    CLI Example:

    .. code-block:: bash

        salt-call cabify_pool.set_weights cabify 20 0a1b2c3d4e5f
    """
    if counts is None:
        replicas = running(pool)
        new = sum(1 for r in replicas if r["spec"] == spec)
        counts = {"new": new, "old": len(replicas) - new}
        if not new or not counts["old"]:
            raise CommandExecutionError(
                f"pool {pool} runs {new} replica(s) of spec {spec} and {counts['old']} other(s): "
                "a share needs both"
            )
    try:
        current = __utils__["cabify_weights.stored"](share, counts["new"], counts["old"], spec)
    except ValueError as err:
        raise CommandExecutionError(f"share of pool {pool}'s new replicas: {err}") from None
    if release:
        current["release"] = release
    _consul("kv_put", __utils__["cabify_kv.weights"](pool), current)
    apply_weights(pool, timeout=timeout)
    return current


def clear_weights(pool: str, timeout: float = 20) -> dict:
    """
    Back to one weight for every replica of POOL: forget the stored weights and
    re-register every running replica with Consul's default weight.

    CLI Example:

    .. code-block:: bash

        salt-call cabify_pool.clear_weights cabify
    """
    _consul("kv_delete", __utils__["cabify_kv.weights"](pool))
    return apply_weights(pool, timeout=timeout)


def _reregister(pool: str, current: dict) -> list[dict]:
    """Register again each of POOL's running replicas that is registered (same weight,
    its check's status kept), with this host's token of now; the running replicas."""
    registered = _consul("registrations", pool)
    replicas = running(pool)
    for replica in replicas:
        if replica["name"] in registered:
            register(pool, replica["name"], keep_status=True, current_weights=current)
    return replicas


def reregister() -> dict[str, int]:
    """
    Register every pool's running replicas on this host again, as they are, with this
    host's Consul token of now (pillar ``consul:api:token``): after a rotation of the
    tokens, Consul syncs a registration with the token it was made with, and the old
    one is about to go (``orch.consul_tokens``). Returns the replicas by pool.

    CLI Example:

    .. code-block:: bash

        salt-call cabify_pool.reregister
    """
    return {pool: len(_reregister(pool, weights(pool))) for pool in pools()}


def apply_weights(pool: str, timeout: float = 20) -> dict:
    """
    Re-register POOL's running replicas with the weights stored for them (keeping their
    check's status) and wait until HAProxy shows those weights.

    CLI Example:

    .. code-block:: bash

        salt-call cabify_pool.apply_weights cabify
    """
    current = weights(pool)
    replicas = _reregister(pool, current)
    if not local_lb():
        return {"replicas": len(replicas), "weights": current}
    deadline = time.monotonic() + timeout
    while True:
        lb = _lb("servers", pool)
        wrong = []
        for replica in replicas:
            server = lb.get(f"{replica['address']}:{replica['port']}")
            want = weight_of(replica, current) or 1
            if server and server["up"] and server["weight"] != want:
                wrong.append(f"{replica['name']} ({server['weight']}, not {want})")
        if not wrong:
            return {"replicas": len(replicas), "weights": current}
        if time.monotonic() > deadline:
            raise CommandExecutionError(
                f"HAProxy did not take the new weights within {timeout}s: {', '.join(wrong)}"
            )
        time.sleep(0.1)


# --- registration ----------------------------------------------------------------------------


def register(
    pool: str,
    name: str,
    keep_status: bool = False,
    current_weights: dict | None = None,
    passing: bool = False,
) -> dict:
    """
    Register POOL's running replica NAME in Consul with its weight (see
    :py:func:`weights`). KEEP_STATUS keeps the status of its check (a weight change
    never takes a passing replica out of service for a check interval); PASSING starts
    it passing (the replica has just answered its health check: Consul need not wait
    up to a check interval for its first one).

    CLI Example:

    .. code-block:: bash

        salt-call cabify_pool.register cabify cabify-2-a1b2c3
    """
    replica = _docker("replica", name)
    if replica is None or replica["status"] != "running" or not replica["address"] or replica["pool"] != pool:
        raise CommandExecutionError(f"pool {pool} has no running replica named {name!r} with an address")
    status = "passing" if passing else None
    if keep_status:
        status = _consul("registrations", pool).get(name, {}).get("status")
    current = current_weights if current_weights is not None else weights(pool)
    return _consul(
        "register",
        replica,
        pool,
        weight=weight_of(replica, current),
        status=status,
        deregister_after=_setting(pool, "registration:deregister_critical_after", "30s"),
    )


def reconcile(pool: str) -> dict:
    """
    Make Consul match Docker for POOL: deregister this pool's instances (meta ``pool``)
    whose container is gone or stopped, remove the catalog's entries of this node that
    its agent no longer knows (``cabify_consul.catalog_orphans``), register running
    replicas that are missing,
    and put back to ready HAProxy slots left in drain with no replica behind them.
    Instances registered by anything else are left alone. Returns what it did.

    CLI Example:

    .. code-block:: bash

        salt-call cabify_pool.reconcile cabify
    """
    live = {r["name"]: r for r in running(pool)}
    registered = _consul("registrations", pool)
    ours = {sid for sid, reg in registered.items() if reg["pool"] == pool}
    done: dict[str, list[str]] = {"deregistered": [], "registered": []}
    for sid in sorted(ours - set(live)):
        _consul("deregister", sid)
        done["deregistered"].append(sid)
    orphans = _consul("catalog_orphans", pool, remove=True)
    if orphans:
        done["catalog_orphans_removed"] = orphans
    current = weights(pool)
    for name, replica in sorted(live.items()):
        reg = registered.get(name)
        moved = reg is not None and (reg["address"], reg["port"]) != (replica["address"], replica["port"])
        if reg is None or moved or reg["pool"] != pool:
            register(pool, name, current_weights=current)
            done["registered"].append(name)
    live_slots = [f"{r['address']}:{r['port']}" for r in live.values()]
    released = _lb("release_stuck_slots", pool, live_slots) if local_lb() else []
    if released:
        done["slots_released"] = released
    return done


# --- health and drain -----------------------------------------------------------------------


def healthy(pool: str, name: str) -> bool:
    """
    True once POOL's replica NAME is passing in Consul and UP in HAProxy (this host's;
    passing is all on a host without one).

    CLI Example:

    .. code-block:: bash

        salt-call cabify_pool.healthy cabify cabify-2-a1b2c3
    """
    reg = _consul("registrations", pool).get(name)
    if not reg or reg["status"] != "passing":
        return False
    if not local_lb():
        return True
    server = _lb("server", pool, reg["address"], reg["port"])
    return bool(server and server["up"])


def wait_healthy(
    pool: str,
    names: list[str],
    timeout: float = 60,
    min_healthy_time: float = 0,
    fence: dict | None = None,
    crash_on_restart: bool = True,
) -> None:
    """
    Wait until every replica of NAMES has been healthy for MIN_HEALTHY_TIME seconds;
    raise naming the ones that are not (or whose container stopped, or restarted unless
    not CRASH_ON_RESTART: an old replica given back may have restarted long ago) by
    TIMEOUT, or when FENCE's release lost its lock.

    CLI Example:

    .. code-block:: bash

        salt-call cabify_pool.wait_healthy cabify '[cabify-2-a1b2c3]' timeout=30
    """
    deadline = time.monotonic() + timeout
    healthy_since: dict[str, float] = {}
    looked_at_docker = 0.0

    def crashed() -> None:
        current = {r["name"]: r for r in _docker("replicas", pool)}
        dead = [
            n
            for n in names
            if n not in current
            or current[n]["status"] in ("exited", "dead")
            or (crash_on_restart and current[n]["restarts"])
        ]
        if dead:
            raise CommandExecutionError(f"replicas crashed before becoming healthy: {', '.join(dead)}")

    while True:
        check_fence(fence)
        now = time.monotonic()
        # Docker is asked once a second (it is the slow one), and before saying healthy.
        if now - looked_at_docker >= 1:
            crashed()
            looked_at_docker = now
        registered = _consul("registrations", pool)
        lb = _lb("servers", pool) if local_lb() else None
        for name in names:
            reg = registered.get(name) or {}
            slot = f"{reg.get('address')}:{reg.get('port')}"
            server = {"up": True} if lb is None else lb.get(slot) or {}
            if server.get("state", "").startswith("DRAIN"):
                # A slot that a drain left behind got this new replica: give it back.
                _lb("set_state", pool, server["name"], "ready")
            if reg.get("status") == "passing" and server.get("up"):
                healthy_since.setdefault(name, now)
            else:
                healthy_since.pop(name, None)
        if all(now - healthy_since.get(n, now + 1) >= min_healthy_time for n in names):
            if looked_at_docker != now:
                crashed()
            return
        if now > deadline:
            late = [n for n in names if n not in healthy_since]
            raise CommandExecutionError(f"replicas not healthy after {timeout:g}s: {', '.join(late)}")
        time.sleep(0.1)


def start(
    pool: str,
    version: str,
    role: str = "stable",
    env: dict | None = None,
    resources: dict | None = None,
    network: str | None = None,
    fence: dict | None = None,
) -> dict:
    """
    Start one replica of VERSION in POOL and register it (with its weight). ENV is the
    replica's whole environment (see :py:func:`replica_env`).

    CLI Example:

    .. code-block:: bash

        salt-call cabify_pool.start cabify 2 role=canary
    """
    check_fence(fence)
    wrong = __utils__["cabify_failpoints.hit"]("pool.start")
    if wrong:
        env = {**(env or {}), **wrong}
    replica = _docker("start_replica", pool, version, role, env, resources, network or pool)
    try:
        register(pool, replica["name"], passing=_answers_health(replica))
    except Exception:
        # Unregistered, nobody would know of it: it must not outlive the failure.
        try:
            _docker("remove_replica", replica["name"])
        except Exception as err:  # noqa: BLE001 - the registration's error is the one to raise
            log.error(
                "cabify: pool %s: could not remove unregistered replica %s: %s", pool, replica["name"], err
            )
        raise
    return replica


def _answers_health(replica: dict, timeout: float = HEALTH_PROBE_TIMEOUT) -> bool:
    """REPLICA answered 200 on /health (what its Consul check asks) within TIMEOUT
    seconds of starting; False when it did not (Consul's own check decides then)."""
    if not replica.get("address"):
        return False
    url = f"http://{replica['address']}:{replica['port']}/health"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=0.5) as answer:
                if answer.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.05)
    return False


def _wait_quiet(replica: dict, quiet: float, timeout: float) -> bool:
    """Wait until REPLICA has served no request for QUIET seconds since it was
    deregistered (its /status), or refuses connections (it is gone); True if it did
    within TIMEOUT seconds."""
    url = f"http://{replica['address']}:{replica['port']}/status"
    started = time.monotonic()
    while True:
        try:
            with urllib.request.urlopen(url, timeout=0.5) as answer:
                status = json.load(answer)
        except urllib.error.URLError as err:
            if isinstance(err.reason, ConnectionRefusedError):
                return True
            status = {}
        except (OSError, ValueError):
            status = {}
        waited = time.monotonic() - started
        # A request before the deregistration says nothing of the LBs since.
        idle = min(float(status.get("idle_for", 0)), waited)
        if idle >= quiet:
            return True
        if waited >= timeout:
            return False
        time.sleep(0.1)


def drain(
    pool: str, name: str, drain_timeout: float = 10, fence: dict | None = None, stop: bool = True
) -> dict:
    """
    Take POOL's replica NAME out of service with no failed request: drain it in HAProxy
    (no new request), deregister it from Consul, wait until HAProxy shows no session on
    it (up to DRAIN_TIMEOUT), then stop it with SIGTERM (the app exits as soon as it is
    idle, at most its own DRAIN_TIMEOUT later) and remove it. Returns what it did.
    Without STOP it is left to the caller to stop (it serves nothing any more), within
    the returned ``stop_timeout`` seconds.
    HAProxy's slot stays drained until DNS refills it (see :py:func:`wait_healthy`)
    or :py:func:`reconcile` finds it empty.

    CLI Example:

    .. code-block:: bash

        salt-call cabify_pool.drain cabify cabify-1-a1b2c3 drain_timeout=10
    """
    check_fence(fence)
    replica = _docker("replica", name)
    if replica is None:
        _consul("deregister", name)
        return {"name": name, "gone": True}
    here = local_lb() and bool(replica["address"])
    slot = _lb("drain", pool, replica["address"], replica["port"]) if here else None
    _consul("deregister", name)
    started = time.monotonic()
    idle = True
    if slot:
        idle = _lb("wait_idle", pool, replica["address"], replica["port"], drain_timeout)
    elif not local_lb() and replica["address"]:
        idle = _wait_quiet(replica, DRAIN_QUIET, drain_timeout)
    _failpoint("pool.drain")
    check_fence(fence)
    stop_timeout = max(1.0, drain_timeout - (time.monotonic() - started)) + 2
    if not stop:
        return {"name": name, "slot": slot, "idle": idle, "stop_timeout": stop_timeout}
    _docker("stop_replica", name, stop_timeout)
    # The slot stays in drain until DNS gives it another replica (wait_healthy puts it
    # back to ready) or reconcile finds it empty: nobody waits for DNS here.
    log.info(
        "cabify: pool %s: drained and removed %s (%s)",
        pool,
        name,
        "idle" if idle else "drain_timeout reached",
    )
    return {"name": name, "slot": slot, "idle": idle, "seconds": round(time.monotonic() - started, 2)}


def restore(pool: str, name: str, spec: dict | None = None) -> str:
    """
    Give back POOL's replica NAME after a release that stopped half-way: a replica that
    still runs is registered again and taken out of drain; one that is gone is started
    again from SPEC (its :py:func:`cabify_docker.clone_spec`). Returns the name of the
    replica that now serves in its place.

    CLI Example:

    .. code-block:: bash

        salt-call cabify_pool.restore cabify cabify-1-a1b2c3
    """
    _failpoint("pool.restore")
    replica = _docker("replica", name)
    if replica is not None and replica["status"] == "running":
        register(pool, name, keep_status=True)
        if replica["address"] and local_lb():
            _lb("undrain", pool, replica["address"], replica["port"])
        return name
    if spec is None:
        raise CommandExecutionError(f"replica {name} of pool {pool} is gone and nothing says what it ran")
    if replica is not None:
        _docker("remove_replica", name)
    started = start(pool, spec["version"], spec["role"], spec["env"], spec["resources"], spec.get("network"))
    return started["name"]


def remove_role(
    pool: str, role: str = "canary", drain_timeout: float = 5, fence: dict | None = None
) -> list[str]:
    """
    Take every replica of ROLE in POOL out of service and remove it: all of them leave
    Consul first (no new request reaches them), then each is drained and removed.

    CLI Example:

    .. code-block:: bash

        salt-call cabify_pool.remove_role cabify canary
    """
    with _host_lock(pool, fence):
        names = [r["name"] for r in _docker("replicas", pool) if r["role"] == role]
        for name in names:
            _consul("deregister", name)
        for name in names:
            drain(pool, name, drain_timeout=drain_timeout)
        if names and local_lb():
            _lb("release_stuck_slots", pool, [f"{r['address']}:{r['port']}" for r in running(pool)])
    return names


# --- the pool ------------------------------------------------------------------------------


def plan(
    pool: str,
    version: str,
    replicas: int = 3,
    env: dict | None = None,
    resources: dict | None = None,
    role: str | None = None,
) -> dict:
    """
    What it takes for POOL to run exactly REPLICAS stable replicas of VERSION with ENV
    (the whole environment, see :py:func:`replica_env`) and RESOURCES:
    ``{"keep", "start", "remove"}``. Canary replicas are removed too, unless ROLE limits
    the plan to the replicas of that role. Changes nothing.

    CLI Example:

    .. code-block:: bash

        salt-call cabify_pool.plan cabify 2 replicas=5
    """
    wanted = __utils__["cabify_plan.spec_hash"](version, env, resources)
    return __utils__["cabify_plan.plan"](_docker("replicas", pool), wanted, replicas, role)


def settings(pool: str) -> dict:
    """
    POOL's settings on this host as the cabify formula merges them: the formula's
    defaults (``cabify:pool`` of defaults.yaml), then pillar ``cabify:pool``, then
    ``cabify:pools:<pool>``. What the fleet's release controller starts from.

    CLI Example:

    .. code-block:: bash

        salt-call cabify_pool.settings cabify
    """
    defaults = salt.utils.yaml.safe_load(__salt__["cp.get_file_str"]("salt://cabify/defaults.yaml") or "{}")
    pillar = __salt__["pillar.get"]("cabify", {}, unmask=True) or {}
    if pool not in (pillar.get("pools") or {}):
        raise CommandExecutionError(f"pool {pool} is not in this host's pillar (cabify:pools:{pool})")
    merged = salt.utils.dictupdate.merge(
        salt.utils.dictupdate.merge(defaults.get("pool") or {}, pillar.get("pool") or {}),
        pillar["pools"][pool] or {},
    )
    merged["network"] = merged.get("network") or pool
    merged["name"] = pool
    return merged


def release_plan(
    pool: str, version: str, release: dict | None = None, env: dict | None = None, role: str | None = None
) -> dict:
    """
    This host's part of a fleet release of POOL to VERSION (RELEASE settings and ENV
    override the pool's): the spec the new replicas get, the replicas to keep, how
    many to start, the running old ones to drain (and the spec to start each again
    like for like), the stopped ones to clear, and the merged settings. With ROLE,
    only that role's replicas count (a canary's promotion leaves the canaries to the
    controller). Changes nothing.

    CLI Example:

    .. code-block:: bash

        salt-call cabify_pool.release_plan cabify 2
    """
    merged = settings(pool)
    merged["release"] = {**(merged.get("release") or {}), **(release or {})}
    if env is not None:
        merged["env"] = env
    full_env = replica_env(merged.get("env"), merged["drain_timeout"])
    spec = __utils__["cabify_plan.spec_hash"](str(version), full_env, merged.get("resources"))
    current = _docker("replicas", pool)
    steps = __utils__["cabify_plan.rolling_plan"](current, spec, int(merged["replicas"]), 1, role)
    old = [name for batch in steps["batches"] for name in batch["drain"]]
    return {
        "host": __grains__.get("id"),
        "spec": spec,
        "env": full_env,
        "settings": merged,
        "keep": steps["keep"],
        "start": sum(batch["start"] for batch in steps["batches"]),
        "old": old,
        # What a revert needs to start each old one again like for like.
        "specs": {name: _docker("clone_spec", name) for name in old},
        "remove_stopped": steps["remove_stopped"],
        "versions": sorted({r["version"] for r in current if r["status"] == "running"}),
    }


def deregister(pool: str, names: list[str], fence: dict | None = None) -> list[str]:
    """
    Take POOL's replicas NAMES out of Consul (the LBs' DNS drops them); the names that
    were registered. A fleet release drains them on every LB first.

    CLI Example:

    .. code-block:: bash

        salt-call cabify_pool.deregister cabify '[cabify-1-a1b2c3]'
    """
    check_fence(fence)
    registered = _consul("registrations", pool)
    for name in names:
        _consul("deregister", name)
    return [name for name in names if name in registered]


def converge(
    pool: str,
    version: str,
    replicas: int = 3,
    env: dict | None = None,
    resources: dict | None = None,
    network: str | None = None,
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

        salt-call cabify_pool.converge cabify 2 replicas=3
    """
    with _host_lock(pool):
        todo = plan(pool, version, replicas, env, resources)
        _docker("network_present", network or pool, pool)
        started: list[str] = []
        try:
            for _ in range(todo["start"]):
                started.append(start(pool, version, "stable", env, resources, network)["name"])
            if started:
                wait_healthy(pool, started, timeout=healthy_timeout)
        except Exception:
            # Nothing half-done: the new replicas go, the old ones were never touched.
            for name in started:
                try:
                    drain(pool, name, drain_timeout=0)
                except Exception as err:  # noqa: BLE001 - the error that stopped the converge is raised
                    log.error("cabify: pool %s: could not remove new replica %s: %s", pool, name, err)
            raise
        for name in todo["remove"]:
            drain(pool, name, drain_timeout=drain_timeout)
        reconciled = reconcile(pool)
    return {"started": started, "removed": todo["remove"], "reconciled": reconciled}


# --- self-healing ------------------------------------------------------------------------------


def pools() -> list[str]:
    """
    The pools that have replicas (running or not) on this host.

    CLI Example:

    .. code-block:: bash

        salt-call cabify_pool.pools
    """
    return sorted({r["pool"] for r in _docker("replicas") if r["pool"]})


def summary(pool: str | None = None) -> dict[str, dict[str, dict[str, int]]]:
    """
    This host's share of POOL (of every pool here without it): by version, the replicas
    running, and how many of them pass their check in Consul. What ``salt-run
    cabify.status`` shows for each app host.

    CLI Example:

    .. code-block:: bash

        salt-call cabify_pool.summary cabify
    """
    found: dict[str, dict[str, dict[str, int]]] = {}
    for name in [pool] if pool else pools():
        registered = _consul("registrations", name)
        versions = found.setdefault(name, {})
        for replica in running(name):
            counts = versions.setdefault(replica["version"], {"running": 0, "passing": 0})
            counts["running"] += 1
            counts["passing"] += registered.get(replica["name"], {}).get("status") == "passing"
    return found


def heal(pool: str | None = None, replace_critical: bool = False) -> dict:
    """
    Replace POOL's replicas that died (killed, crashed) with new ones of the same
    version, role, env and resources, and, with REPLACE_CRITICAL, the running ones that
    are critical in Consul; remove replicas that were stopped on purpose (exit code 0,
    deregistered). Then reconcile Consul with Docker. Never looks at pillar: a heal
    restores what ran, it does not release. Without POOL, every pool of this host. A
    pool that a release holds is left to it (the beacon reports what stays broken).

    CLI Example:

    .. code-block:: bash

        salt-call cabify_pool.heal cabify
        salt-call cabify_pool.heal replace_critical=True
    """
    done = {}
    for name in [pool] if pool else pools():
        running_release = _consul("lock_holder", __utils__["cabify_kv.lock"](name))
        if running_release:
            # The release owns the pool until it ends; the beacon asks again after.
            done[name] = {"skipped": f"release {running_release.get('id')} holds pool {name}"}
            continue
        with _host_lock(name):
            done[name] = _heal(name, replace_critical)
    return done[pool] if pool else done


def _heal(pool: str, replace_critical: bool) -> dict:
    registered = _consul("registrations", pool)
    done: dict[str, Any] = {"replaced": {}, "removed": []}
    for replica in _docker("replicas", pool):
        name = replica["name"]
        dead = replica["status"] in ("exited", "dead")
        critical = replica["status"] == "running" and registered.get(name, {}).get("status") == "critical"
        if dead and replica["exit_code"] == 0 and name not in registered:
            _docker("remove_replica", name)
            done["removed"].append(name)
            continue
        if not dead and not (critical and replace_critical):
            continue
        spec = _docker("clone_spec", name)
        if spec is None:
            continue
        replacement = start(
            pool, spec["version"], spec["role"], spec["env"], spec["resources"], spec["network"]
        )
        if dead:
            _consul("deregister", name)
            _docker("remove_replica", name)
        else:
            drain(pool, name, drain_timeout=0)
        done["replaced"][name] = replacement["name"]
        log.warning(
            "cabify: pool %s: replaced %s replica %s with %s",
            pool,
            replica["status"],
            name,
            replacement["name"],
        )
    done["reconciled"] = reconcile(pool)
    return done
