"""
Converge the Cabify App's replica pool on this host.

.. code-block:: yaml

    cabify-pool-converged:
      cabify_pool.converged:
        - name: cabify
        - version: "2"
        - replicas: 3
        - env: {}
        - resources: {memory: 128m, cpus: 0.5}

The plan (replicas kept, started, removed) is computed first; ``test=True`` reports it
and changes nothing. A real run starts new replicas before it drains old ones, so the
pool never serves with fewer than it had.
"""

from __future__ import annotations

from salt.exceptions import CommandExecutionError

__virtualname__ = "cabify_pool"


def __virtual__():
    if "cabify.plan" not in __salt__:
        return (False, "cabify_pool: the cabify execution module is not loaded (docker, py-consul?)")
    return __virtualname__


def converged(
    name: str,
    version: str,
    replicas: int = 3,
    env: dict | None = None,
    resources: dict | None = None,
    network: str = "cabify",
    healthy_timeout: float = 60,
    drain_timeout: float = 10,
    release: dict | None = None,
    canary: dict | None = None,
) -> dict:
    """
    Exactly REPLICAS healthy replicas of VERSION (with ENV and RESOURCES) run in pool
    NAME, each registered in Consul; stale registrations are removed.

    When running replicas differ from what is asked (another version, env or
    resources), that is a release, done with RELEASE's strategy (``rolling``: batches of
    ``max_parallel``, each healthy for ``min_healthy_time`` before old ones are drained,
    within ``healthy_deadline``, reverted on failure when ``auto_revert``; ``canary``: a
    few replicas get CANARY's ``steps`` of traffic under analysis, then promotion or
    abort, see ``cabify_canary.run``).
    """
    ret = {"name": name, "changes": {}, "result": True, "comment": ""}
    release = {"strategy": "rolling", **(release or {})}
    try:
        wanted = __salt__["cabify.spec_hash"](version, env, resources)
        running = [r for r in __salt__["cabify.replicas"](name) if r["status"] == "running"]
        if any(r["spec"] != wanted for r in running):
            release["canary"] = canary or {}
            return _release(ret, name, version, replicas, env, resources, network, drain_timeout, release)
        todo = __salt__["cabify.plan"](version, replicas, env, resources, pool=name)
        missing = {}
        if not todo["start"] and not todo["remove"]:
            running = {r["name"] for r in __salt__["cabify.replicas"](name) if r["status"] == "running"}
            registered = set(__salt__["cabify.registrations"]())
            missing = {"register": sorted(running - registered), "deregister": sorted(registered - running)}
            if not missing["register"] and not missing["deregister"]:
                ret["comment"] = f"{replicas} replica(s) of version {version} running and registered"
                return ret
        would = {"start": todo["start"], "remove": todo["remove"], **{k: v for k, v in missing.items() if v}}
        if __opts__["test"]:
            ret["result"] = None
            ret["changes"] = would
            ret["comment"] = (
                f"Would start {todo['start']} and remove {len(todo['remove'])} replica(s) "
                f"to run {replicas} of version {version}"
            )
            return ret
        done = __salt__["cabify.converge"](
            version,
            replicas,
            env,
            resources,
            pool=name,
            network=network,
            healthy_timeout=healthy_timeout,
            drain_timeout=drain_timeout,
        )
    except CommandExecutionError as err:
        ret["result"] = False
        ret["comment"] = f"pool {name} unchanged where it failed; old replicas keep serving: {err}"
        return ret
    ret["changes"] = {k: v for k, v in done.items() if v and (not isinstance(v, dict) or any(v.values()))}
    ret["comment"] = f"{replicas} replica(s) of version {version} running and registered"
    return ret


def _release(ret, pool, version, replicas, env, resources, network, drain_timeout, release) -> dict:
    settings = {
        "max_parallel": int(release.get("max_parallel", 1)),
        "min_healthy_time": float(release.get("min_healthy_time", 3)),
        "healthy_deadline": float(release.get("healthy_deadline", 60)),
        "auto_revert": bool(release.get("auto_revert", True)),
    }
    if release["strategy"] not in ("rolling", "canary"):
        ret.update(result=False, comment=f"release strategy {release['strategy']!r} is not supported")
        return ret
    # A canary's promotion rolls the stable replicas only; a rolling release, all of them.
    role = "stable" if release["strategy"] == "canary" else None
    steps = __salt__["cabify.rolling_plan"](
        version, replicas, env, resources, settings["max_parallel"], pool, role
    )
    if release["strategy"] == "canary":
        return _canary(
            ret, pool, version, replicas, env, resources, network, drain_timeout, settings, release, steps
        )
    if __opts__["test"]:
        ret.update(
            result=None,
            changes={"release": {"strategy": "rolling", "to": version, **steps}},
            comment=f"Would roll pool {pool} to version {version} in {len(steps['batches'])} batch(es)",
        )
        return ret
    return _carry_out(
        ret,
        "cabify_release.rolling",
        version,
        f"pool {pool} rolled to version {version}",
        pool=pool,
        replicas=replicas,
        env=env,
        resources=resources,
        network=network,
        drain_timeout=drain_timeout,
        **settings,
    )


def _carry_out(ret: dict, function: str, version: str, success: str, **kwargs) -> dict:
    """Run the release FUNCTION; its error becomes the state's failure."""
    try:
        done = __salt__[function](version, **kwargs)
    except CommandExecutionError as err:
        ret.update(result=False, comment=str(err))
        return ret
    ret["changes"] = {"release": done["id"], **done["replicas"]}
    ret["comment"] = f"{success} (release {done['id']})"
    return ret


def _canary(
    ret, pool, version, replicas, env, resources, network, drain_timeout, settings, release, steps
) -> dict:
    canary = release["canary"]
    if __opts__["test"]:
        ret.update(
            result=None,
            changes={
                "release": {
                    "strategy": "canary",
                    "to": version,
                    "canary_replicas": canary.get("replicas", 1),
                    "steps": canary.get("steps"),
                    "analysis": canary.get("analysis"),
                    "auto_promote": canary.get("auto_promote", True),
                    "promotion": steps,
                }
            },
            comment=(
                f"Would start {canary.get('replicas', 1)} canary replica(s) of version {version} in pool "
                f"{pool}, step through {len(canary.get('steps') or [])} weight(s), then promote in "
                f"{len(steps['batches'])} batch(es) or abort"
            ),
        )
        return ret
    settings = {k: v for k, v in settings.items() if k != "auto_revert"}
    return _carry_out(
        ret,
        "cabify_release.canary",
        version,
        f"canary of version {version} promoted in pool {pool}",
        pool=pool,
        replicas=replicas,
        env=env,
        resources=resources,
        network=network,
        drain_timeout=drain_timeout,
        canary=canary,
        **settings,
    )
