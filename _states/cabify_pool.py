"""
A pool of the Cabify App on this host, converged: its replicas, registrations and,
when what runs differs from what is asked, a release.

.. code-block:: yaml

    cabify-pool-shop-converged:
      cabify_pool.converged:
        - name: shop
        - version: "2"
        - replicas: 3
        - env: {}
        - resources: {memory: 128m, cpus: 0.5}
        - drain_timeout: 5
        - release: {strategy: rolling, max_parallel: 1}

What must change is computed first; ``test=True`` reports it (the batches of a
release, the shares a canary's steps will give) and changes nothing. A real run starts
new replicas before it drains old ones, so the pool never serves with fewer than it had.
"""

from __future__ import annotations

from typing import Any

from salt.exceptions import CommandExecutionError

__virtualname__ = "cabify_pool"

RELEASE_KEYS = ("max_parallel", "min_healthy_time", "healthy_deadline", "auto_revert", "lock_ttl")


def __virtual__():
    if "cabify_pool.plan" not in __salt__ or "cabify_release.rolling" not in __salt__:
        return (False, "cabify_pool state: the cabify_pool and cabify_release modules are not loaded")
    return __virtualname__


def converged(
    name: str,
    version: str,
    replicas: int = 3,
    env: dict | None = None,
    resources: dict | None = None,
    network: str | None = None,
    healthy_timeout: float = 60,
    drain_timeout: float = 5,
    release: dict | None = None,
    canary: dict | None = None,
) -> dict:
    """
    Exactly REPLICAS healthy replicas of VERSION (with ENV and RESOURCES) run in pool
    NAME on NETWORK (default: the pool's name), each registered in Consul; stale
    registrations are removed, and what a release that died left behind is recovered
    first. DRAIN_TIMEOUT caps how long a replica may take to finish its requests when
    it leaves (the app exits as soon as it is idle).

    When running replicas differ from what is asked (another version, env, resources or
    drain_timeout), that is a release, done with RELEASE's ``strategy``: ``rolling``
    (batches of ``max_parallel``, each healthy for ``min_healthy_time`` before old ones
    are drained, within ``healthy_deadline``, reverted on failure when ``auto_revert``)
    or ``canary`` (CANARY's ``replicas`` get its ``steps`` of traffic under analysis,
    then promotion or abort; see ``cabify_release.canary``).
    """
    ret: dict[str, Any] = {"name": name, "changes": {}, "result": True, "comment": ""}
    pool = {
        "version": str(version),
        "replicas": int(replicas),
        "env": env or {},
        "resources": resources or {},
        "network": network or name,
        "drain_timeout": float(drain_timeout),
    }
    release = {"strategy": "rolling", **(release or {})}
    try:
        if release["strategy"] not in ("rolling", "canary"):
            raise CommandExecutionError(f"release strategy {release['strategy']!r} is not supported")
        notes = _recover(ret, name)
        _released_now(name, pool)
        whole_env = __salt__["cabify_pool.replica_env"](pool["env"], pool["drain_timeout"])
        wanted = __utils__["cabify_plan.spec_hash"](pool["version"], whole_env, pool["resources"])
        running = __salt__["cabify_pool.running"](name)
        if pool["replicas"] > 0 and any(r["spec"] != wanted for r in running if r["role"] == "stable"):
            if pool.get("unreadable"):
                raise CommandExecutionError(
                    f"it runs {sorted({r['version'] for r in running})}, and the version the fleet's "
                    f"last release set cannot be read ({pool['unreadable']}): nothing changed; apply "
                    "again once Consul answers"
                )
            settings = {**pool, **{k: release[k] for k in RELEASE_KEYS if k in release}}
            if release["strategy"] == "canary":
                return _canary(ret, name, settings, canary or {}, notes)
            return _rolling(ret, name, settings, notes)
        return _scale(ret, name, pool, whole_env, healthy_timeout, notes)
    except CommandExecutionError as err:
        ret.update(result=False, changes={}, comment=f"pool {name}: {err}")
        return ret


def _released_now(name: str, pool: dict) -> None:
    """When the pillar could not read what the fleet's last release set (Consul was down
    as the pillar was compiled: a host that has just booted), read it now through this
    host's agent, which the states before this one have started. What the last release
    set wins over the pillar files, as in the pillar; when it still cannot be read, the
    reason goes into POOL's ``unreadable`` and no version changes."""
    unreadable = __salt__["pillar.get"]("cabify:released_unreadable", None, unmask=True)
    if not unreadable:
        return
    try:
        released = __salt__["cabify_consul.kv_get"](__utils__["cabify_kv.released"](name))
    except CommandExecutionError as err:
        pool["unreadable"] = f"pillar: {unreadable}; this host's agent: {err}"
        return
    if isinstance(released, dict) and released.get("version") is not None:
        pool["version"] = str(released["version"])
        if isinstance(released.get("env"), dict):
            pool["env"] = released["env"]


def _recover(ret: dict, name: str) -> list[str]:
    """Finish what a release that died left behind (nothing under test=True but the
    report); the notes go into the comment."""
    if not __salt__["cabify_release.needs_recovery"](name):
        return []
    if __opts__["test"]:
        ret["changes"]["recover"] = "what a release that died left behind (canaries, weights, its record)"
        return [f"Would recover pool {name} after a release that died"]
    done = __salt__["cabify_release.recover"](name)
    if done and "skipped" not in done:
        ret["changes"]["recovered"] = done
        return [f"recovered pool {name} after a release that died: {done}"]
    return []


def _comment(ret: dict, notes: list[str], text: str) -> dict:
    ret["comment"] = "; ".join([*notes, text])
    return ret


def _scale(
    ret: dict, name: str, pool: dict, whole_env: dict, healthy_timeout: float, notes: list[str]
) -> dict:
    todo = __salt__["cabify_pool.plan"](name, pool["version"], pool["replicas"], whole_env, pool["resources"])
    missing: dict[str, list[str]] = {}
    if not todo["start"] and not todo["remove"]:
        live = {r["name"]: (r["address"], r["port"]) for r in __salt__["cabify_pool.running"](name)}
        registered = {
            sid: (reg["address"], reg["port"])
            for sid, reg in __salt__["cabify_consul.registrations"](name).items()
            if reg["pool"] == name
        }
        # A replica registered where it no longer listens (Docker gave a restarted
        # replica another host port) is registered again.
        stale = sorted(n for n in live if n not in registered or registered[n] != live[n])
        missing = {
            k: v for k, v in (("register", stale), ("deregister", sorted(set(registered) - set(live)))) if v
        }
        if not missing:
            if ret["changes"]:
                ret["result"] = None if __opts__["test"] else True
            return _comment(
                ret,
                notes,
                f"{pool['replicas']} replica(s) of version {pool['version']} running and registered",
            )
    would = {"start": todo["start"], "remove": todo["remove"], **missing}
    if __opts__["test"]:
        ret.update(result=None)
        ret["changes"].update(would)
        return _comment(
            ret,
            notes,
            f"Would start {todo['start']} and remove {len(todo['remove'])} replica(s) to run "
            f"{pool['replicas']} of version {pool['version']}",
        )
    done = __salt__["cabify_pool.converge"](
        name,
        pool["version"],
        pool["replicas"],
        whole_env,
        pool["resources"],
        network=pool["network"],
        healthy_timeout=healthy_timeout,
        drain_timeout=pool["drain_timeout"],
    )
    ret["changes"].update(
        {k: v for k, v in done.items() if v and (not isinstance(v, dict) or any(v.values()))}
    )
    return _comment(
        ret, notes, f"{pool['replicas']} replica(s) of version {pool['version']} running and registered"
    )


def _rolling(ret: dict, name: str, settings: dict, notes: list[str]) -> dict:
    whole_env = __salt__["cabify_pool.replica_env"](settings["env"], settings["drain_timeout"])
    wanted = __utils__["cabify_plan.spec_hash"](settings["version"], whole_env, settings["resources"])
    steps = __utils__["cabify_plan.rolling_plan"](
        __salt__["cabify_docker.replicas"](name),
        wanted,
        settings["replicas"],
        settings.get("max_parallel", 1),
    )
    if __opts__["test"]:
        ret["result"] = None
        ret["changes"]["release"] = {"strategy": "rolling", "to": settings["version"], **steps}
        return _comment(
            ret,
            notes,
            f"Would roll pool {name} to version {settings['version']} in {len(steps['batches'])} batch(es)",
        )
    done = __salt__["cabify_release.rolling"](name, **settings)
    ret["changes"].update({"release": done["id"], **done["replicas"]})
    return _comment(ret, notes, f"pool {name} rolled to version {settings['version']} (release {done['id']})")


def _canary(ret: dict, name: str, settings: dict, canary: dict, notes: list[str]) -> dict:
    stable = settings["replicas"]
    shares = __salt__["cabify_release.shares"](canary, stable)
    count = __salt__["cabify_release.check_canary"](canary)["replicas"]
    unreachable = [
        f"step {n}: {s['asked']:g}% asked, {s['given']:g}% given "
        f"with {stable} stable + {count} canary replica(s)"
        for n, s in enumerate(shares, start=1)
        if abs(s["asked"] - s["given"]) >= 0.05
    ]
    given = ", ".join(f"{s['given']:g}%" for s in shares)
    if __opts__["test"]:
        ret["result"] = None
        ret["changes"]["release"] = {
            "strategy": "canary",
            "to": settings["version"],
            "canary_replicas": count,
            "steps": shares,
            "auto_promote": canary.get("auto_promote", True),
        }
        return _comment(
            ret,
            notes + unreachable,
            f"Would start {count} canary replica(s) of version {settings['version']} in pool {name}, step "
            f"through {len(shares)} share(s) ({given}), then promote or abort",
        )
    done = __salt__["cabify_release.canary"](name, canary=canary, **settings)
    ret["changes"].update({"release": done["id"], **done["replicas"]})
    return _comment(
        ret,
        notes + unreachable,
        f"canary of version {settings['version']} promoted in pool {name} (release {done['id']})",
    )
