"""
The pools' releases as Consul records them, read on the master; and an operator's
promote or abort of a running canary.

.. code-block:: bash

    salt-run cabify.status --out=json          # every pool
    salt-run cabify.status shop --out=json
    salt-run cabify.history cabify limit=5 --out=json
    salt-run cabify.promote                    # the running canary (name the pool if several run)
    salt-run cabify.abort shop
    salt-run cabify.release cabify 2           # a fleet release, by the controller

Consul and the hosts are found as the release controller finds them (the master's
``cabify_controller`` configuration, see ``_runners/cabify_controller.py``: Consul at
127.0.0.1:8500 by default, app hosts ``G@roles:app``). What runs on each app host is
asked of the hosts themselves, through Salt (``hosts``); everything else comes from
that Consul.
"""

from __future__ import annotations

import logging
from typing import Any

import salt.client

try:
    import consul  # noqa: F401 - checked by __virtual__; the client comes from cabify_kv

    HAS_CONSUL = True
except ImportError:
    HAS_CONSUL = False

log = logging.getLogger(__name__)

__virtualname__ = "cabify"


def __virtual__():
    if not HAS_CONSUL:
        return (False, "cabify runner: py-consul is not installed in Salt's venv")
    return __virtualname__


def _kv(func: str, *args) -> Any:
    return __utils__[f"cabify_kv.{func}"](*args)


def _client():
    """The fleet's Consul, as the release controller reaches it (``cabify_controller``)."""
    return __salt__["cabify_controller.consul_client"]()


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
    target = __salt__["cabify_controller.config"]()["app_target"]
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


def lbs(pool: str, timeout: int = 10) -> dict[str, Any]:
    """
    Each LB's live figures of POOL (``cabify_lb.figures``: requests, errors, error
    rate and p50/p99 by role, the canary's share), asked of the LBs through Salt. An
    LB that does not answer within TIMEOUT seconds says so.

    CLI Example:

    .. code-block:: bash

        salt-run cabify.lbs cabify --out=json
    """
    target = __salt__["cabify_controller.config"]()["lb_target"]
    client = salt.client.get_local_client(__opts__["conf_file"])
    try:
        expected = client.gather_minions(target, "compound")
        answers = client.cmd(target, "cabify_lb.figures", [pool], tgt_type="compound", timeout=timeout)
    finally:
        client.destroy()
    found: dict[str, Any] = {host: "no answer" for host in expected}
    for host, figures in answers.items():
        found[host] = (
            {k: figures[k] for k in ("stable", "canary", "share") if k in figures}
            if isinstance(figures, dict)
            else figures
        )
    return dict(sorted(found.items()))


def status(pool: str | None = None) -> dict:
    """
    POOL now (every pool without it): the running release (lock holder) if any, its
    journal (``phase``, ``batch`` of ``of``: ``paused`` while paused), the last release,
    what the controller last released (the pool's version in pillar), the instances
    registered in Consul by version and health, what each app host runs (``hosts``: by
    version, running and passing), each LB's live figures (``lbs``), the canary's live
    state and the weights in force.

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
        "journal": _get(client, _kv("journal", pool)),
        "released": _get(client, _kv("released", pool)),
        "lbs": lbs(pool),
    }


def _command(pool: str | None, command: str) -> dict:
    """Send COMMAND to the release of POOL (the only one running, without POOL) that
    can take it: a controller's release takes pause, resume and abort, and promote
    when it is a canary; a canary run host by host takes promote and abort."""
    client = _client()

    def takes(holder: dict) -> bool:
        if holder.get("controller") and command in ("pause", "resume", "abort"):
            return True
        return holder.get("strategy") == "canary" and command in ("promote", "abort")

    running = {
        name: holder
        for name in ([pool] if pool else _pools(client))
        if (holder := _holder(client, name)) and takes(holder)
    }
    if not running:
        where = f"pool {pool}" if pool else "any pool"
        kind = "canary release" if command == "promote" else "release that takes " + command
        return {"pool": pool, "result": False, "comment": f"no {kind} of {where} is running"}
    if len(running) > 1:
        return {
            "pool": None,
            "result": False,
            "comment": f"releases of several pools run ({', '.join(sorted(running))}): name the pool",
        }
    ((name, holder),) = running.items()
    if holder.get("controller"):
        value = {"command": command, "release": holder.get("id"), "by": __opts__.get("user")}
        client.kv.put(_kv("command", name), _kv("encode", value))
    else:
        client.kv.put(_kv("canary_command", name), _kv("encode", command))
    return {
        "pool": name,
        "result": True,
        "release": holder.get("id"),
        "comment": f"{command} sent to {holder.get('id')}",
    }


def pause(pool: str | None = None) -> dict:
    """
    Pause the release of POOL that the controller runs (the only one running, without
    POOL) before its next batch: it keeps its lock, the pool serves as it is, until
    ``cabify.resume`` (or ``cabify.abort``).

    CLI Example:

    .. code-block:: bash

        salt-run cabify.pause
        salt-run cabify.pause shop
    """
    return _command(pool, "pause")


def resume(pool: str | None = None) -> dict:
    """
    Resume the paused release of POOL (the only one running, without POOL).

    CLI Example:

    .. code-block:: bash

        salt-run cabify.resume
    """
    return _command(pool, "resume")


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
    keep serving. A controller's release stops before its next batch and reverts.

    CLI Example:

    .. code-block:: bash

        salt-run cabify.abort
        salt-run cabify.abort shop
    """
    return _command(pool, "abort")


def _refuse(pool: str, version: str, reason: str, **facts: Any) -> dict:
    """Refuse a release request before anything starts: logged, fired as event
    ``cabify/release/refused`` (pool, version, reason and FACTS), and failed."""
    log.warning("cabify: pool %s version %s: %s", pool, version, reason)
    refusal = {"pool": pool, "version": str(version), "reason": reason, **facts}
    __salt__["event.send"]("cabify/release/refused", refusal)
    __context__["retcode"] = 1
    return {**refusal, "retcode": 1, "result": "refused"}


def _refused(pool: str, version: str, requester: str) -> dict | None:
    """A refusal when REQUESTER may not ask for releases; None when it may."""
    allowed = (__opts__.get("cabify_controller") or {}).get("release_requesters") or []
    if requester in allowed:
        return None
    reason = (
        f"release request from {requester!r} refused: master config "
        f"cabify_controller:release_requesters does not list it (it lists {sorted(allowed)})"
    )
    return _refuse(pool, version, reason, requester=requester)


def _desired(pool: str, trigger: str) -> dict:
    """What the desired-version key TRIGGER of POOL asks for now (read with the
    controller's token), or {"refused": why} when TRIGGER is not that key or says
    nothing to release."""
    if trigger != _kv("desired", pool):
        return {
            "refused": f"trigger {trigger!r} is not pool {pool}'s desired-version key {_kv('desired', pool)}"
        }
    _, entry = _client().kv.get(trigger)
    asked = _kv("desired_request", _kv("decode", (entry or {}).get("Value")))
    return asked or {"refused": f"{trigger} names no version"}


def _stack_pillar():
    """This project's pillar rules (``_modules/stack_pillar.py``, beside this runner's
    directory), for checking a request's settings on the master before anything starts."""
    import importlib.util  # noqa: PLC0415
    import os  # noqa: PLC0415

    if "cabify.stack_pillar" not in __context__:
        path = os.path.join(
            os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "_modules", "stack_pillar.py"
        )
        spec = importlib.util.spec_from_file_location("cabify_stack_pillar_rules", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        __context__["cabify.stack_pillar"] = module
    return __context__["cabify.stack_pillar"]


def request_problems(canary: Any = None, settings: Any = None) -> list[str]:
    """
    What is wrong with a release request's CANARY and SETTINGS (release settings), by
    the rules of the pool's pillar (``cabify:pools:<pool>:canary``, ``...:release``),
    one "key: reason" a line, keys named as the request names them.

    CLI Example:

    .. code-block:: bash

        salt-run cabify.request_problems canary='{steps: [{weight: 120, pause: 1}]}'
    """
    found = []
    pool: dict[str, Any] = {}
    for key, value in (("canary", canary), ("release", settings)):
        if value is None:
            continue
        if not isinstance(value, dict):
            found.append(f"{'settings' if key == 'release' else key}: must be a mapping (got {value!r})")
            continue
        pool[key] = value
    for problem in _stack_pillar().problems("cabify", {"pool": pool}):
        if problem.startswith(("cabify:pool:canary", "cabify:pool:release")):
            found.append(problem.removeprefix("cabify:pool:").replace("release:", "settings:", 1))
    return found


def release(
    pool: str,
    version: str,
    strategy: str = "rolling",
    settings: dict | None = None,
    env: dict | None = None,
    trigger: str | None = None,
    canary: dict | None = None,
    requester: str | None = None,
) -> dict:
    """
    Release VERSION of POOL across the fleet now, by the release controller on the
    master (see ``_runners/cabify_controller.py``): STRATEGY ``rolling`` or ``canary``
    (CANARY overrides the pool's canary settings); SETTINGS override the pool's release
    settings, ENV the replicas' environment; TRIGGER is the KV key whose change asked
    for it (one release per change, however many minions saw it: it must be POOL's
    ``cabify/desired/<pool>``, and what that key says now is what is released);
    REQUESTER is who sent the event that asked for it (a minion ID, or ``master``):
    without a TRIGGER, one master config ``cabify_controller:release_requesters`` does
    not list is refused and logged, and event ``cabify/release/refused`` says so.
    Returns the
    release's record; fails (and reverts) naming the step and host that failed. What a
    release sets stays: it is the app hosts' version in pillar.

    CLI Example:

    .. code-block:: bash

        salt-run cabify.release cabify 2
        salt-run cabify.release cabify 2 settings='{max_parallel: 2, host_by_host: true}'
        salt-run cabify.release cabify 2 strategy=canary canary='{steps: [{weight: 20, pause: 60}]}'
    """
    if trigger is not None:
        # A beacon's event only wakes the controller: what is released is what the key
        # says, and only the controller's and operators' tokens may write it.
        asked = _desired(pool, trigger)
        if "refused" in asked:
            return _refuse(pool, version, asked["refused"], requester=requester)
        strategy, settings, canary = asked["strategy"], asked.get("settings"), asked.get("canary")
    elif requester is not None:
        refused = _refused(pool, version, requester)
        if refused:
            return refused
    problems = request_problems(canary, settings)
    if problems:
        # Before any lock, record or replica: a bad request changes nothing.
        return _refuse(pool, version, "bad release request: " + "; ".join(problems), requester=requester)
    if strategy == "canary":
        return __salt__["cabify_controller.canary"](
            pool, str(version), settings=settings, env=env, canary=canary, trigger=trigger
        )
    if strategy != "rolling":
        __context__["retcode"] = 1
        return {
            "pool": pool,
            "retcode": 1,
            "result": "failed",
            "reason": f"strategy {strategy!r}: a release is rolling or canary",
        }
    return __salt__["cabify_controller.rolling"](
        pool, str(version), settings=settings, env=env, trigger=trigger
    )
