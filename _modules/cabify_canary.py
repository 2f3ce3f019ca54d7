"""
Canary releases of the Cabify App's pool on this host: a few replicas of the new
version (role ``canary``) beside the stable ones, a share of the requests that rises
step by step while live figures from HAProxy are checked, then promotion (the new
version rolled out to the whole pool) or abort (the canary drained and removed).

The share is exact whatever the replica counts: HAProxy takes each server's weight
from Consul's SRV record, which Consul fills from the instance's ``Weights.Passing``
(HAProxy weight = Passing / 256). The weights of both roles live in Consul KV
(``cabify/weights/<pool>``) so that a replica registered later (heal, reconcile) gets
its role's weight, and a HAProxy reload keeps them.

.. code-block:: bash

    salt-call cabify_canary.weights 20 stable=3 canary=1
    salt-call cabify_canary.set_weight 20
    salt-call cabify_canary.figures
    salt-call cabify_canary.run 2 replicas=3 steps='[{weight: 10, pause: 30}]'

Operators steer a running canary through Consul KV ``cabify/canary/<pool>/command``
(``promote`` or ``abort``), which ``salt-run cabify.promote`` and ``salt-run
cabify.abort`` write; the canary's live state is at ``cabify/canary/<pool>/state``.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from salt.exceptions import CommandExecutionError

try:
    import consul

    HAS_CONSUL = True
except ImportError:
    HAS_CONSUL = False

log = logging.getLogger(__name__)

__virtualname__ = "cabify_canary"

HAPROXY_WEIGHT_MAX = 256
DEFAULT_STEPS = [{"weight": 10, "pause": 30}, {"weight": 50, "pause": 30}]
DEFAULT_ANALYSIS = {
    "max_error_rate": 0.05,  # fraction of the canary's requests that failed (5xx, retried)
    "max_p99_ms": 500,
    "min_requests": 20,  # fewer in a step's window: inconclusive, the step waits
    "interval": 5,  # seconds between two readings of the figures
    "inconclusive_limit": 60,  # seconds an inconclusive step may wait before it aborts
}


class Aborted(Exception):
    """The canary must stop: the reason is the message."""


def __virtual__():
    if not HAS_CONSUL or "cabify.replicas" not in __salt__:
        return (False, "cabify_canary: the cabify execution module is not loaded (docker, py-consul?)")
    return __virtualname__


def _consul():
    host = __salt__["config.get"]("consul:api:host", "127.0.0.1")
    port = __salt__["config.get"]("consul:config:ports:http", 8500)
    return consul.Consul(host=host, port=port)


def _kv_get(key: str) -> Any:
    _, entry = _consul().kv.get(key)
    if not entry or not entry.get("Value"):
        return None
    try:
        return json.loads(entry["Value"])
    except ValueError:
        return entry["Value"].decode().strip()


def _kv_put(key: str, value: Any) -> None:
    _consul().kv.put(key, json.dumps(value, sort_keys=True))


# --- weights -----------------------------------------------------------------------------


def weights(weight: float, stable: int, canary: int) -> dict:
    """
    The HAProxy weights (1-256) of each stable and each canary replica that give the
    canary WEIGHT percent of the requests with STABLE and CANARY replicas, and the share
    they give exactly. Pure computation. HAProxy weights stop at 256, so a share near
    100 with many stable replicas is only approached (99 with 3 stable and 1 canary
    gives 98.84).

    CLI Example:

    .. code-block:: bash

        salt-call cabify_canary.weights 20 stable=3 canary=1
    """
    weight, stable, canary = float(weight), int(stable), int(canary)
    if not 0 < weight < 100:
        raise CommandExecutionError(f"canary weight must be between 0 and 100 exclusive (got {weight})")
    if stable < 1 or canary < 1:
        raise CommandExecutionError("a canary weight needs at least one stable and one canary replica")
    target = weight / 100
    best = None
    for per_stable in range(1, HAPROXY_WEIGHT_MAX + 1):
        ideal = target * stable * per_stable / ((1 - target) * canary)
        for per_canary in {
            max(1, min(HAPROXY_WEIGHT_MAX, int(ideal))),
            max(1, min(HAPROXY_WEIGHT_MAX, int(ideal) + 1)),
        }:
            share = canary * per_canary / (canary * per_canary + stable * per_stable)
            if best is None or abs(share - target) < abs(best[2] - target) - 1e-12:
                best = (per_stable, per_canary, share)
        if abs(best[2] - target) < 0.0005:  # within 0.05 percentage points
            break
    per_stable, per_canary, share = best
    return {"stable": per_stable, "canary": per_canary, "share": round(share * 100, 2)}


def role_weight(role: str, pool: str = "cabify") -> int | None:
    """
    The HAProxy weight a replica of ROLE in POOL is registered with now, or None when
    no canary runs (Consul's default weight, HAProxy weight 1).

    CLI Example:

    .. code-block:: bash

        salt-call cabify_canary.role_weight canary
    """
    current = _kv_get(f"cabify/weights/{pool}")
    return int(current[role]) if isinstance(current, dict) and role in current else None


def _running(pool: str) -> list[dict]:
    return [r for r in __salt__["cabify.replicas"](pool) if r["status"] == "running"]


def set_weight(weight: float, pool: str = "cabify", timeout: float = 20) -> dict:
    """
    Give POOL's canary replicas WEIGHT percent of the requests (0 < WEIGHT < 100): store
    both roles' weights, re-register every running replica with its role's weight, and
    wait until HAProxy serves with them (no reload).

    CLI Example:

    .. code-block:: bash

        salt-call cabify_canary.set_weight 20
    """
    running = _running(pool)
    counts = {role: sum(1 for r in running if r["role"] == role) for role in ("stable", "canary")}
    wanted = weights(weight, counts["stable"], counts["canary"])
    _kv_put(
        f"cabify/weights/{pool}", {"stable": wanted["stable"], "canary": wanted["canary"], "weight": weight}
    )
    _apply_weights(pool, running, {"stable": wanted["stable"], "canary": wanted["canary"]}, timeout)
    return {"weight": float(weight), **counts, "per_replica": wanted}


def clear_weights(pool: str = "cabify", timeout: float = 20) -> dict:
    """
    Back to one weight for every replica of POOL (no canary): forget the stored weights
    and re-register every running replica with Consul's default weight.

    CLI Example:

    .. code-block:: bash

        salt-call cabify_canary.clear_weights
    """
    _consul().kv.delete(f"cabify/weights/{pool}")
    running = _running(pool)
    _apply_weights(pool, running, {"stable": 1, "canary": 1}, timeout)
    return {"replicas": len(running)}


def _apply_weights(pool: str, running: list[dict], per_role: dict[str, int], timeout: float) -> None:
    registered = __salt__["cabify.registrations"]()
    for replica in running:
        if replica["name"] in registered:
            __salt__["cabify.register"](replica["name"], keep_status=True)
    deadline = time.monotonic() + timeout
    while True:
        servers = __salt__["cabify.haproxy_servers"]()
        wrong = []
        for replica in running:
            server = servers.get(f"{replica['address']}:{replica['port']}")
            if server and server["weight"] != per_role.get(replica["role"], 1):
                wrong.append(f"{replica['name']} ({server['weight']})")
        if not wrong:
            return
        if time.monotonic() > deadline:
            raise CommandExecutionError(
                f"HAProxy did not take the new weights within {timeout}s: {', '.join(wrong)}"
            )
        time.sleep(0.25)


# --- live figures ------------------------------------------------------------------------


def figures(since: float | None = None, baseline: dict | None = None, backend: str = "cabify") -> dict:
    """
    Live figures per role (``stable``, ``canary``) from HAProxy: requests, errors (5xx
    answers, failed connections and requests retried elsewhere), error rate, and
    latency p50/p99 of the server's response (ms) from HAProxy's request log. Counters
    count from BASELINE (a former result's ``counters``), latency from SINCE (epoch
    seconds); without them, everything HAProxy still holds.

    CLI Example:

    .. code-block:: bash

        salt-call cabify_canary.figures
    """
    counters = __salt__["cabify.haproxy_role_counters"](backend)
    latencies = __salt__["cabify.request_latencies"](since or 0, backend)
    out: dict[str, Any] = {"counters": counters, "at": time.time()}
    for role in ("stable", "canary"):
        now = counters.get(role, {"requests": 0, "errors": 0})
        before = (baseline or {}).get(role, {"requests": 0, "errors": 0})
        requests = max(0, now["requests"] - before["requests"])
        errors = max(0, now["errors"] - before["errors"])
        timings = sorted(latencies.get(role, []))
        out[role] = {
            "requests": requests,
            "errors": errors,
            "error_rate": round(errors / requests, 4) if requests else 0.0,
            "p50_ms": _percentile(timings, 0.50),
            "p99_ms": _percentile(timings, 0.99),
            "logged": len(timings),
        }
    return out


def _percentile(ordered: list[float], q: float) -> float | None:
    if not ordered:
        return None
    return float(ordered[min(len(ordered) - 1, int(q * len(ordered)))])


# --- the canary --------------------------------------------------------------------------


def command(pool: str = "cabify") -> str | None:
    """
    The operator's pending command for POOL's running canary (``promote``, ``abort``),
    if any.

    CLI Example:

    .. code-block:: bash

        salt-call cabify_canary.command
    """
    value = _kv_get(f"cabify/canary/{pool}/command")
    return value if value in ("promote", "abort") else None


def state(pool: str = "cabify") -> dict | None:
    """
    The live state of POOL's canary (release, version, phase, step, weight, figures of
    both roles), or None when none ever ran.

    CLI Example:

    .. code-block:: bash

        salt-call cabify_canary.state
    """
    return _kv_get(f"cabify/canary/{pool}/state")


def _publish(pool: str, live: dict, event: str | None = None, **data: Any) -> None:
    _kv_put(f"cabify/canary/{pool}/state", live)
    if event and live.get("release"):
        __salt__["event.send"](f"cabify/release/{live['release']}/{event}", {**data, "state": live})


def _check_canaries(names: list[str], pool: str) -> None:
    current = {r["name"]: r for r in __salt__["cabify.replicas"](pool)}
    for name in names:
        replica = current.get(name)
        if replica is None or replica["status"] != "running" or replica["restarts"]:
            raise Aborted(f"canary replica {name} crashed")


def _watch(pool: str, canaries: list[str], seconds: float, interval: float) -> str | None:
    """Sleep up to SECONDS in slices of at most INTERVAL, checking the canaries and the
    operator's command; return the command if one came."""
    deadline = time.monotonic() + seconds
    while True:
        _check_canaries(canaries, pool)
        asked = command(pool)
        if asked == "abort":
            raise Aborted("aborted by the operator (cabify.abort)")
        if asked == "promote":
            return asked
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        time.sleep(min(interval, left, 1.0))


def _judge(numbers: dict, analysis: dict) -> str | None:
    """Why the canary's figures break a threshold, or None."""
    canary = numbers["canary"]
    if canary["requests"] < analysis["min_requests"]:
        return None
    if canary["error_rate"] > analysis["max_error_rate"]:
        return (
            f"canary error rate {canary['error_rate']:.2%} over {canary['requests']} requests "
            f"is above max_error_rate {analysis['max_error_rate']:.2%}"
        )
    if canary["p99_ms"] is not None and canary["p99_ms"] > analysis["max_p99_ms"]:
        return f"canary p99 latency {canary['p99_ms']} ms is above max_p99_ms {analysis['max_p99_ms']} ms"
    return None


def _step(pool: str, live: dict, canaries: list[str], step: dict, analysis: dict) -> str | None:
    """Hold STEP's weight for its pause while the figures are read every interval;
    abort when a threshold breaks; wait (up to inconclusive_limit) while the canary
    has had too few requests. Returns ``promote`` if the operator asked for it."""
    _check_canaries(canaries, pool)
    set_weight(step["weight"], pool)
    live.update(phase="analysing", weight=step["weight"])
    _publish(pool, live, "step", number=live["step"], weight=step["weight"])
    since, baseline = time.time(), __salt__["cabify.haproxy_role_counters"]()
    started = time.monotonic()
    end = started + float(step["pause"])
    limit = end + float(analysis["inconclusive_limit"])
    while True:
        asked = _watch(
            pool, canaries, min(float(analysis["interval"]), max(0.0, end - time.monotonic())), 1.0
        )
        if asked:
            return asked
        numbers = figures(since, baseline)
        live["figures"] = {role: numbers[role] for role in ("stable", "canary")}
        _publish(pool, live, "analysis", number=live["step"])
        broken = _judge(numbers, analysis)
        if broken:
            raise Aborted(f"step {live['step']} (weight {step['weight']}%): {broken}")
        now = time.monotonic()
        if now < end:
            continue
        if numbers["canary"]["requests"] >= analysis["min_requests"]:
            return None
        if now > limit:
            raise Aborted(
                f"step {live['step']} inconclusive: the canary had {numbers['canary']['requests']} "
                f"request(s) in {now - started:.0f}s, fewer than min_requests {analysis['min_requests']}"
            )
        live["phase"] = "inconclusive"
        _publish(pool, live)
        end = now + float(analysis["interval"])


def _abort(pool: str, live: dict, canaries: list[str], reason: str, drain_timeout: float) -> None:
    """Weight back to nothing first (HAProxy drain and deregistration of every canary),
    then the canaries go; the stable replicas never stopped serving."""
    live.update(phase="aborting", reason=reason)
    _publish(pool, live, "aborting", reason=reason)
    # Every canary of the pool, also one a heal may have started in place of ours.
    removed = __salt__["cabify.remove_role"]("canary", pool, drain_timeout=drain_timeout)
    log.warning("cabify canary: aborted (%s); removed %s (ours: %s)", reason, removed, canaries)
    clear_weights(pool)
    __salt__["cabify.reconcile"](pool)
    live.update(phase="aborted", weight=0)
    _publish(pool, live, "aborted", reason=reason)


def run(
    version: str,
    replicas: int = 3,
    env: dict | None = None,
    resources: dict | None = None,
    canary: dict | None = None,
    min_healthy_time: float = 3,
    healthy_deadline: float = 60,
    drain_timeout: float = 5,
    max_parallel: int = 1,
    pool: str = "cabify",
    network: str = "cabify",
    release_id: str | None = None,
) -> dict:
    """
    A canary release of POOL to VERSION: start CANARY's ``replicas`` (role canary) beside
    the stable ones, then for each of its ``steps`` give them ``weight`` percent of the
    requests for ``pause`` seconds while HAProxy's live figures are checked against its
    ``analysis`` (``max_error_rate``, ``max_p99_ms``, ``min_requests``, ``interval``,
    ``inconclusive_limit``). Then promote (with ``auto_promote``, or when the operator
    runs ``salt-run cabify.promote``): roll VERSION out to REPLICAS stable replicas and
    remove the canaries. A broken threshold, a crashed canary or ``salt-run cabify.abort``
    aborts: the canaries are drained and removed, the stable pool never stopped serving.

    CLI Example:

    .. code-block:: bash

        salt-call cabify_canary.run 2 replicas=3 canary='{replicas: 1, steps: [{weight: 20, pause: 10}]}'
    """
    settings = {
        "replicas": 1,
        "steps": DEFAULT_STEPS,
        "auto_promote": True,
        "promote_timeout": 3600,
        **(canary or {}),
    }
    analysis = {**DEFAULT_ANALYSIS, **(settings.get("analysis") or {})}
    stable = [r for r in _running(pool) if r["role"] == "stable"]
    if not stable:
        raise CommandExecutionError(
            f"a canary needs stable replicas of pool {pool} running beside it; none run"
        )
    _consul().kv.delete(f"cabify/canary/{pool}/command")
    live: dict[str, Any] = {
        "release": release_id,
        "version": str(version),
        "phase": "starting",
        "step": 0,
        "steps": settings["steps"],
        "weight": 0,
        "figures": {},
        "canaries": [],
    }
    _publish(pool, live, "canary-start", replicas=settings["replicas"])
    canaries: list[str] = []
    try:
        try:
            __salt__["cabify.network_present"](network)
            first = settings["steps"][0]["weight"] if settings["steps"] else 50
            # Weights first: the stable replicas take theirs, and a canary is registered
            # with its own from the start, so it never gets more than the first step's share.
            per_replica = weights(first, len(stable), int(settings["replicas"]))
            _kv_put(f"cabify/weights/{pool}", {**per_replica, "weight": first})
            _apply_weights(pool, stable, {"stable": per_replica["stable"]}, 20)
            for _ in range(int(settings["replicas"])):
                replica = __salt__["cabify.start_replica"](pool, version, "canary", env, resources, network)
                canaries.append(replica["name"])
                __salt__["cabify.register"](replica["name"])
            live["canaries"] = canaries
            __salt__["cabify.wait_healthy"](
                canaries, timeout=healthy_deadline, min_healthy_time=min_healthy_time
            )
            asked = None
            for number, step in enumerate(settings["steps"], start=1):
                live["step"] = number
                asked = _step(pool, live, canaries, step, analysis)
                if asked == "promote":
                    break
            if asked != "promote" and not settings["auto_promote"]:
                live["phase"] = "waiting for promote"
                _publish(pool, live, "waiting", promote_timeout=settings["promote_timeout"])
                if _watch(pool, canaries, float(settings["promote_timeout"]), 1.0) != "promote":
                    raise Aborted(f"not promoted within promote_timeout {settings['promote_timeout']}s")
        except (Aborted, CommandExecutionError) as err:
            _abort(pool, live, canaries, str(err), drain_timeout)
            raise CommandExecutionError(f"canary of version {version} aborted: {err}") from err
        live["phase"] = "promoting"
        _publish(pool, live, "promoting")
        try:
            clear_weights(pool)
            rolled = __salt__["cabify.rolling"](
                version,
                replicas,
                env,
                resources,
                max_parallel=max_parallel,
                min_healthy_time=min_healthy_time,
                healthy_deadline=healthy_deadline,
                drain_timeout=drain_timeout,
                pool=pool,
                network=network,
                release_id=release_id,
                role="stable",
            )
        except CommandExecutionError as err:
            # The rolling machinery restored the stable pool; the canaries go too.
            _abort(pool, live, canaries, f"promotion failed: {err}", drain_timeout)
            raise CommandExecutionError(f"canary of version {version} not promoted: {err}") from err
        removed = __salt__["cabify.remove_role"]("canary", pool, drain_timeout=drain_timeout)
        __salt__["cabify.reconcile"](pool)
        live["phase"] = "promoted"
        _publish(pool, live, "promoted")
    finally:
        _consul().kv.delete(f"cabify/canary/{pool}/command")
    return {"started": rolled["started"], "removed": rolled["removed"] + removed, "canaries": canaries}
