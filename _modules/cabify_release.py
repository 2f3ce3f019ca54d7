"""
Releases of a pool on this host, rolling or canary: one at a time per pool (a Consul
session lock), each recorded in Consul KV, its progress sent as events
``cabify/release/<id>/<step>``.

.. code-block:: bash

    salt-call cabify_release.rolling cabify 2 replicas=3
    salt-call cabify_release.canary cabify 2 canary='{steps: [{weight: 20, pause: 30}]}'
    salt-call cabify_release.recover cabify
    salt-run cabify.status

A release holds its pool's lock (``cabify/locks/<pool>``, a session of ``lock_ttl``
seconds that it renews while it runs) and the pool's host lock. Before each step it
checks that it still holds the Consul lock; when it lost it (the session expired or
was destroyed) it stops, says so, and leaves the pool to whoever holds the lock now.

Every other failure leaves the pool whole: a rolling release gives back every old
replica it drained (and removes the new ones), a canary is aborted (its share to
nothing first, then its replicas go, then its weights). A release whose process died
is finished by :py:func:`recover` (run by the next release, the pool state and the
heal orchestration): orphan canaries removed, stale weights cleared, its record marked
interrupted.
"""

from __future__ import annotations

import contextvars
import logging
import os
import queue
import secrets
import threading
import time
from typing import Any

from salt.exceptions import CommandExecutionError

log = logging.getLogger(__name__)

__virtualname__ = "cabify_release"

_UNFINISHED_PHASES = ("starting", "analysing", "inconclusive", "waiting for promote", "promoting", "aborting")
# Releases kept in a pool's history (the oldest records go when a release ends).
HISTORY_KEEP = 100
# How long a release waits for a recovery that holds the pool's lock (it takes seconds).
RECOVERY_WAIT = 60


class Aborted(Exception):
    """The canary must stop: the reason is the message."""


def __virtual__():
    if "cabify_pool.converge" not in __salt__:
        return (False, "cabify_release: the cabify_pool module is not loaded (docker, py-consul?)")
    return __virtualname__


def _pool(func: str, *args, **kwargs):
    return __salt__[f"cabify_pool.{func}"](*args, **kwargs)


def _consul(func: str, *args, **kwargs):
    return __salt__[f"cabify_consul.{func}"](*args, **kwargs)


def _kv(func: str, *args) -> str:
    return __utils__[f"cabify_kv.{func}"](*args)


def _failpoint(name: str) -> None:
    __utils__["cabify_failpoints.hit"](name)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class _Events:
    """A release's progress events, sent in order by a thread of their own: the release
    never waits on the master to take one (under load that is 0.1 s an event)."""

    def __init__(self):
        self.queue: queue.Queue = queue.Queue()
        # Salt's loader dunders live in context variables: the thread gets a copy.
        self.thread = threading.Thread(target=contextvars.copy_context().run, args=(self._run,), daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (item := self.queue.get()) is not None:
            try:
                __salt__["event.send"](*item)
            except Exception as err:  # noqa: BLE001 - progress is told, never in the way
                log.warning("cabify release: sending event %s failed: %s", item[0], err)

    def close(self, timeout: float = 10) -> None:
        """Send what is queued (for up to TIMEOUT seconds) and stop."""
        self.queue.put(None)
        self.thread.join(timeout)


# The event senders of the releases running in this process, by release id.
_EVENTS: dict[str, _Events] = {}


def _progress(current: dict, step: str, /, **data: Any) -> None:
    """A progress event ``cabify/release/<id>/<step>`` of the CURRENT release (shown by
    ``salt-run state.event``), and a log line."""
    log.info("cabify release %s of pool %s: %s %s", current["id"], current["pool"], step, data)
    event = (f"cabify/release/{current['id']}/{step}", {"pool": current["pool"], **data})
    sender = _EVENTS.get(current["id"])
    if sender is not None:
        sender.queue.put(event)
    else:
        __salt__["event.send"](*event)


# --- lock and history ------------------------------------------------------------------------


def holder(pool: str) -> dict | None:
    """
    Who holds POOL's release lock (``{"id", "minion", "strategy", "to", "started",
    "session"}``), or None.

    CLI Example:

    .. code-block:: bash

        salt-call cabify_release.holder cabify
    """
    return _consul("lock_holder", _kv("lock", pool))


def record(pool: str, release: dict) -> dict:
    """
    Write RELEASE (a dict with an ``id``) to POOL's history in Consul KV.

    CLI Example:

    .. code-block:: bash

        salt-call cabify_release.record cabify '{"id": "manual-1", "result": "note"}'
    """
    _consul("kv_put", _kv("history", pool, release["id"]), release)
    return release


def history(pool: str) -> list[dict]:
    """
    Every release of POOL recorded in Consul KV, newest first.

    CLI Example:

    .. code-block:: bash

        salt-call cabify_release.history cabify
    """
    records = _consul("kv_tree", _kv("history", pool))
    return sorted((r for r in records.values() if isinstance(r, dict)), key=lambda r: r["id"], reverse=True)


def prune_history(pool: str, keep: int = HISTORY_KEEP) -> list[str]:
    """
    Delete all but the KEEP newest records of POOL's history; the ids deleted.

    CLI Example:

    .. code-block:: bash

        salt-call cabify_release.prune_history cabify keep=20
    """
    old = [r["id"] for r in history(pool)[int(keep) :] if r.get("result") != "running"]
    for release_id in old:
        _consul("kv_delete", _kv("history", pool, release_id))
    return old


class _Renewal:
    """Renews the release's session every TTL/3 until stopped; remembers when Consul
    no longer knows the session (the lock is gone)."""

    def __init__(self, session: str, ttl: int):
        self.session, self.ttl = session, ttl
        self.stop = threading.Event()
        self.lost = threading.Event()
        # Salt's loader dunders live in context variables: the thread gets a copy.
        self.thread = threading.Thread(target=contextvars.copy_context().run, args=(self._run,), daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(self.ttl / 3):
            try:
                if not _consul("session_renew", self.session):
                    self.lost.set()
                    return
            except Exception as err:  # noqa: BLE001 - keep trying while the release runs
                log.warning("cabify release: renewing lock session %s failed: %s", self.session, err)


def _run_release(pool: str, strategy: str, version: str, lock_ttl: float, body) -> dict:
    """Take POOL's lock, run BODY(release, fence) under it and the host lock, and record
    the outcome whatever it is."""
    version = str(version)
    release_id = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + secrets.token_hex(2)
    running = sorted({r["version"] for r in _pool("running", pool)})
    release: dict[str, Any] = {
        "id": release_id,
        "pool": pool,
        "minion": __grains__.get("id"),
        "strategy": strategy,
        "from": running,
        "to": version,
        "started": _now(),
        "started_at": time.time(),
        "acting_at": None,
        "ended": None,
        "ended_at": None,
        "result": "running",
        "reason": "",
    }
    key = _kv("lock", pool)
    # The holder's process: a release whose process died on this host is known at once
    # (see _dead), not only when its session expires.
    holder_value = {k: release[k] for k in ("id", "minion", "strategy", "to", "started")} | {
        "pid": os.getpid()
    }
    session = _take_lock(pool, key, holder_value, max(10, int(lock_ttl)))
    fence = {"key": key, "session": session, "release": release_id}
    renewal = _Renewal(session, max(10, int(lock_ttl)))
    _EVENTS[release_id] = _Events()
    try:
        record(pool, release)
        _progress(release, "start", release=release)
        # The host lock: a former release that lost its Consul lock may still be
        # finishing its step here; this one acts only once that one has stopped.
        with __utils__["cabify_hostlock.hold"](pool, timeout=600):
            release["acting_at"] = time.time()
            _pool("check_fence", fence)
            recovered = _recover(pool, by=release_id)
            if recovered:
                release["recovered"] = recovered
            release["replicas"] = body(release, fence)
        release["result"] = "succeeded"
    except Exception as err:
        lost = renewal.lost.is_set() or not _lock_still_held(fence)
        reason = str(err) if not lost or "lost its lock" in str(err) else f"lost its lock: {err}"
        release.update(result="failed", reason=reason)
        raise CommandExecutionError(reason) from err
    finally:
        if release["result"] == "running":
            release.update(result="failed", reason="interrupted")
        release.update(ended=_now(), ended_at=time.time())
        renewal.stop.set()
        _quietly("recording the release", record, pool, release)
        if not renewal.lost.is_set():
            _quietly("releasing the lock", _consul, "lock_release", key, session)
        _quietly("sending the end event", _progress, release, "end", release=release)
        _EVENTS.pop(release_id).close()
        _quietly("pruning the history", prune_history, pool)
    return release


def _take_lock(pool: str, key: str, value: dict, ttl: int) -> str:
    """A session holding POOL's lock KEY, or an error naming the release that holds it.
    A recovery (what the heal does for a release that died: seconds) is waited for, up to
    RECOVERY_WAIT seconds, and so is a lock that was let go of between the attempt and
    the look at its holder: neither is another release running."""
    deadline = time.monotonic() + RECOVERY_WAIT
    while True:
        session = _consul("lock_acquire", key, value, ttl)
        if session is not None:
            return session
        other = holder(pool)
        if time.monotonic() < deadline and (other is None or other.get("strategy") == "recovery"):
            log.info("cabify: pool %s: waiting for %s to let go of the lock", pool, (other or {}).get("id"))
            _failpoint("release.lock-wait")
            time.sleep(0.5)
            continue
        other = other or {}
        raise CommandExecutionError(
            f"another release of pool {pool} is running: release {other.get('id')} to version "
            f"{other.get('to')} on {other.get('minion')}, started {other.get('started')}"
        )


def _lock_still_held(fence: dict) -> bool:
    try:
        return _consul("lock_held", fence["key"], fence["session"])
    except Exception:  # noqa: BLE001 - Consul unreachable: the error is the reason, not the lock
        return True


def _best_effort(what: str, func, *args, attempts: int = 3, **kwargs) -> Any:
    """FUNC tried up to ATTEMPTS times with a short back-off; the last error is raised.
    For the steps of a revert or an abort, which must not give up at the first error."""
    for attempt in range(1, attempts + 1):
        try:
            return func(*args, **kwargs)
        except Exception as err:
            log.warning("cabify release: %s failed (attempt %s of %s): %s", what, attempt, attempts, err)
            if attempt == attempts:
                raise
            time.sleep(0.5 * attempt)
    return None


def _quietly(what: str, func, *args, **kwargs) -> Any:
    """:func:`_best_effort` that logs a last failure instead of raising it: for the
    bookkeeping that must not hide the outcome it follows."""
    try:
        return _best_effort(what, func, *args, **kwargs)
    except Exception as err:  # noqa: BLE001 - logged; the release's own outcome stands
        log.error("cabify release: %s failed for good: %s", what, err)
        return None


def _steps(*steps: tuple) -> list[str]:
    """Run each (what, func, *args) with :func:`_best_effort`, every one of them whatever
    the others did; the errors of those that kept failing, as "what: error"."""
    problems = []
    for what, func, *args in steps:
        try:
            _best_effort(what, func, *args)
        except Exception as err:  # noqa: BLE001 - collected; the next step still runs
            problems.append(f"{what}: {err}")
    return problems


# --- rolling -----------------------------------------------------------------------------------


def rolling(
    pool: str,
    version: str,
    replicas: int = 3,
    env: dict | None = None,
    resources: dict | None = None,
    network: str | None = None,
    drain_timeout: float = 5,
    max_parallel: int = 1,
    min_healthy_time: float = 3,
    healthy_deadline: float = 60,
    auto_revert: bool = True,
    lock_ttl: float = 30,
    **_: Any,
) -> dict:
    """
    Roll POOL to VERSION batch by batch, under the pool's lock, recorded in history:
    start MAX_PARALLEL new replicas (surge), wait until they have been passing in
    Consul and UP in HAProxy for MIN_HEALTHY_TIME, then drain as many old ones (HAProxy
    drain, deregistration, wait for 0 sessions, SIGTERM: the app exits when idle, at
    most DRAIN_TIMEOUT later). If anything fails (a new replica crashes or is not
    healthy by HEALTHY_DEADLINE, a drain fails, Docker or Consul errs) the release
    stops; with AUTO_REVERT every old replica is given back and the new ones removed.
    Fails at once, naming the holder, when another release of POOL runs.

    CLI Example:

    .. code-block:: bash

        salt-call cabify_release.rolling cabify 2 replicas=3 max_parallel=1
    """
    settings = {
        "replicas": int(replicas),
        "env": _pool("replica_env", env, drain_timeout),
        "resources": resources or {},
        "network": network or pool,
        "drain_timeout": float(drain_timeout),
        "max_parallel": int(max_parallel),
        "min_healthy_time": float(min_healthy_time),
        "healthy_deadline": float(healthy_deadline),
        "auto_revert": bool(auto_revert),
    }
    return _run_release(
        pool,
        "rolling",
        version,
        lock_ttl,
        lambda release, fence: _roll(pool, str(version), settings, release, fence),
    )


def _roll(
    pool: str, version: str, settings: dict, release: dict, fence: dict, role: str | None = None
) -> dict:
    """Replace POOL's replicas (of ROLE, or all) by VERSION batch by batch; revert on failure."""
    wanted = __utils__["cabify_plan.spec_hash"](version, settings["env"], settings["resources"])
    current = __salt__["cabify_docker.replicas"](pool)
    steps = __utils__["cabify_plan.rolling_plan"](
        current, wanted, settings["replicas"], settings["max_parallel"], role
    )
    __salt__["cabify_docker.network_present"](settings["network"], pool)
    for name in steps["remove_stopped"]:
        _pool("drain", pool, name, drain_timeout=0, fence=fence)
    started: list[str] = []
    drained: dict[str, dict | None] = {}
    stops = __utils__["cabify_tasks.background"]()
    _quietly("sending the plan", _progress, release, "plan", version=version, batches=steps["batches"])
    for number, batch in enumerate(steps["batches"], start=1):
        _quietly(
            "sending the batch", _progress, release, "batch", number=number, of=len(steps["batches"]), **batch
        )
        new: list[str] = []
        healthy = False
        try:
            for _ in range(batch["start"]):
                replica = _pool(
                    "start",
                    pool,
                    version,
                    "stable",
                    settings["env"],
                    settings["resources"],
                    settings["network"],
                    fence,
                )
                new.append(replica["name"])
                started.append(replica["name"])
            if new:
                _pool(
                    "wait_healthy",
                    pool,
                    new,
                    timeout=settings["healthy_deadline"],
                    min_healthy_time=settings["min_healthy_time"],
                    fence=fence,
                )
                _quietly(
                    "sending batch-healthy", _progress, release, "batch-healthy", number=number, started=new
                )
            healthy = True
            stops.wait()  # the last batch's old replicas are gone before more go
            for name in batch["drain"]:
                drained[name] = __salt__["cabify_docker.clone_spec"](name)
                _failpoint("release.drain")
                out = _pool(
                    "drain", pool, name, drain_timeout=settings["drain_timeout"], fence=fence, stop=False
                )
                stops.start(
                    f"stopping {name}",
                    __salt__["cabify_docker.stop_replica"],
                    name,
                    out.get("stop_timeout", settings["drain_timeout"] + 2),
                )
        except Exception as err:  # whatever failed, the old version must keep serving
            _quietly("stopping drained replicas", stops.wait)
            if not _lock_still_held(fence):
                raise
            _quietly("sending failed", _progress, release, "failed", batch=number, reason=str(err))
            stopped = f"release to version {version} stopped at batch {number}: {err}"
            if settings.get("auto_revert", True):
                raise CommandExecutionError(
                    f"{stopped}; reverted: {_revert(pool, started, drained)}"
                ) from err
            # Without auto_revert what became healthy stays: a batch whose new replicas
            # never did loses them; one that failed while draining gets back the old
            # replica it was draining.
            this_batch = {n: drained[n] for n in batch["drain"] if n in drained}
            undone = _revert(pool, [], this_batch) if healthy else _revert(pool, new, {})
            raise CommandExecutionError(f"{stopped}; not reverted (auto_revert is off): {undone}") from err
        _quietly(
            "sending batch-done",
            _progress,
            release,
            "batch-done",
            number=number,
            started=new,
            drained=batch["drain"],
        )
    try:
        stops.wait()
    except Exception as err:  # noqa: BLE001 - the drained replicas must not linger: again, in the foreground
        log.warning("cabify: pool %s: %s; removing the drained replicas again", pool, err)
        for name in drained:
            _best_effort(f"removing drained replica {name}", __salt__["cabify_docker.remove_replica"], name)
    _quietly("reconciling", _pool, "reconcile", pool)
    return {"started": started, "removed": list(drained) + steps["remove_stopped"]}


def _revert(pool: str, new: list[str], drained: dict[str, dict | None]) -> str:
    """Give back every old replica that DRAINED took out (registered and undrained if it
    still runs, started again from its spec if it is gone) and wait until they serve;
    then take the NEW replicas out, but only if every old one is back: a pool that
    could not get its old replicas back keeps the new ones serving rather than shrink.
    Every step is retried and runs whatever the others did; never raises, says what
    it did and what failed."""
    problems: list[str] = []
    restored = []
    for name, spec in drained.items():
        try:
            restored.append(_best_effort(f"restoring {name}", _pool, "restore", pool, name, spec))
        except Exception as err:  # noqa: BLE001 - reported; the next one is restored all the same
            problems.append(f"could not give back {name}: {err}")
    if restored:
        try:
            _pool("wait_healthy", pool, restored, timeout=60, crash_on_restart=False)
        except Exception as err:  # noqa: BLE001 - reported below
            problems.append(f"the old replicas given back are not healthy: {err}")
    removed = []
    if not problems:
        for name in new:
            try:
                _best_effort(f"removing new replica {name}", _pool, "drain", pool, name, drain_timeout=0)
                removed.append(name)
            except Exception as err:  # noqa: BLE001 - reported; the next one goes all the same
                problems.append(f"could not remove new replica {name}: {err}")
    problems += _steps(("reconciling", _pool, "reconcile", pool))
    summary = f"removed {len(removed)} new replica(s), gave back {len(restored)} old one(s)"
    if problems:
        kept = f", kept {len(new) - len(removed)} new one(s) serving" if len(removed) < len(new) else ""
        return f"{summary}{kept}; the revert is incomplete: {'; '.join(problems)}"
    return summary


# --- canary --------------------------------------------------------------------------------------

DEFAULT_CANARY = {
    "replicas": 1,
    "steps": [{"weight": 10, "pause": 30}, {"weight": 50, "pause": 30}],
    "auto_promote": True,
    "promote_timeout": 3600,
}


def check_canary(canary: dict | None) -> dict:
    """
    The canary settings CANARY merged over the defaults, or an error naming the bad key
    and the reason (a step's weight must be a share strictly between 0 and 100).

    CLI Example:

    .. code-block:: bash

        salt-call cabify_release.check_canary '{steps: [{weight: 120, pause: 10}]}'
    """
    settings = {**DEFAULT_CANARY, **(canary or {})}
    settings["analysis"] = {**__utils__["cabify_analysis.defaults"](), **(settings.get("analysis") or {})}
    if not isinstance(settings["steps"], list) or not settings["steps"]:
        raise CommandExecutionError("canary:steps: must be a non-empty list of {weight, pause}")
    for number, step in enumerate(settings["steps"], start=1):
        try:
            __utils__["cabify_weights.check_share"](step.get("weight") if isinstance(step, dict) else None)
        except ValueError as err:
            raise CommandExecutionError(f"canary:steps: step {number}: weight {err}") from None
        pause = step.get("pause")
        if isinstance(pause, bool) or not isinstance(pause, (int, float)) or pause < 0:
            raise CommandExecutionError(
                f"canary:steps: step {number}: pause must be seconds, 0 or more (got {pause!r})"
            )
    if int(settings["replicas"]) < 1:
        raise CommandExecutionError(f"canary:replicas: must be at least 1 (got {settings['replicas']!r})")
    return settings


def shares(canary: dict | None, stable: int) -> list[dict]:
    """
    The share of requests each of CANARY's steps asks for and the share it will give
    with STABLE stable replicas beside the canary's (weights stop at 256, so a share
    near 0 or 100 may be out of reach).

    CLI Example:

    .. code-block:: bash

        salt-call cabify_release.shares '{replicas: 1, steps: [{weight: 99, pause: 10}]}' 3
    """
    settings = check_canary(canary)
    out = []
    for step in settings["steps"]:
        split = __utils__["cabify_weights.split"](step["weight"], int(settings["replicas"]), int(stable))
        out.append(
            {
                "asked": split["asked"],
                "given": split["share"],
                "weights": {"canary": split["new"], "stable": split["old"]},
            }
        )
    return out


def canary(
    pool: str,
    version: str,
    replicas: int = 3,
    env: dict | None = None,
    resources: dict | None = None,
    network: str | None = None,
    drain_timeout: float = 5,
    canary: dict | None = None,
    max_parallel: int = 1,
    min_healthy_time: float = 3,
    healthy_deadline: float = 60,
    lock_ttl: float = 30,
    **_: Any,
) -> dict:
    """
    A canary release of POOL to VERSION under the pool's lock, recorded in history:
    start CANARY's ``replicas`` (role canary) beside the stable ones, then for each of
    its ``steps`` give them ``weight`` percent of the requests for ``pause`` seconds
    while HAProxy's live figures are judged against its ``analysis``
    (``max_error_rate``, ``max_p99_ms``, ``min_requests``, ``interval``,
    ``inconclusive_limit``). Then promote (with ``auto_promote``, or when the operator
    runs ``salt-run cabify.promote``): the new version rolls out to REPLICAS stable
    replicas while its share only rises, and the canaries go. A broken threshold, a
    crashed canary, any error or ``salt-run cabify.abort`` aborts: the canaries' share
    goes to nothing, they are removed and the weights cleared.

    CLI Example:

    .. code-block:: bash

        salt-call cabify_release.canary cabify 2 canary='{replicas: 1, steps: [{weight: 20, pause: 10}]}'
    """
    settings = {
        "replicas": int(replicas),
        "env": _pool("replica_env", env, drain_timeout),
        "resources": resources or {},
        "network": network or pool,
        "drain_timeout": float(drain_timeout),
        "max_parallel": int(max_parallel),
        "min_healthy_time": float(min_healthy_time),
        "healthy_deadline": float(healthy_deadline),
        "auto_revert": True,
        "canary": check_canary(canary),
    }
    return _run_release(
        pool,
        "canary",
        version,
        lock_ttl,
        lambda release, fence: _canary(pool, str(version), settings, release, fence),
    )


def _publish(pool: str, live: dict, event: str | None = None, **data: Any) -> None:
    _consul("kv_put", _kv("canary_state", pool), live)
    if event and live.get("release"):
        __salt__["event.send"](
            f"cabify/release/{live['release']}/{event}", {"pool": pool, **data, "state": live}
        )


def command(pool: str) -> str | None:
    """
    The operator's pending command for POOL's running canary (``promote``, ``abort``).

    CLI Example:

    .. code-block:: bash

        salt-call cabify_release.command cabify
    """
    value = _consul("kv_get", _kv("canary_command", pool))
    return value if value in ("promote", "abort") else None


def _check_canaries(pool: str, names: list[str]) -> None:
    current = {r["name"]: r for r in __salt__["cabify_docker.replicas"](pool)}
    for name in names:
        replica = current.get(name)
        if replica is None or replica["status"] != "running" or replica["restarts"]:
            raise Aborted(f"canary replica {name} crashed")


def _watch(pool: str, canaries: list[str], seconds: float, fence: dict) -> str | None:
    """Wait up to SECONDS, checking every second the canaries, the lock and the
    operator's command; return ``promote`` if it came."""
    deadline = time.monotonic() + seconds
    while True:
        _pool("check_fence", fence)
        _check_canaries(pool, canaries)
        asked = command(pool)
        if asked == "abort":
            raise Aborted("aborted by the operator (cabify.abort)")
        if asked == "promote":
            return asked
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        time.sleep(min(left, 0.5))


def _step(
    pool: str, live: dict, canaries: list[str], step: dict, settings: dict, fence: dict, spec: str
) -> str | None:
    """Hold STEP's share for its pause while the figures are read every interval; abort
    when a threshold breaks; wait (up to inconclusive_limit) while the canary has had
    too few requests. Returns ``promote`` if the operator asked for it."""
    analysis = settings["canary"]["analysis"]
    _check_canaries(pool, canaries)
    _failpoint("release.canary-step")
    given = _pool("set_weights", pool, step["weight"], spec, release=live["release"])
    live.update(phase="analysing", weight=step["weight"], share_given=given["share"])
    _publish(pool, live, "step", number=live["step"], weight=step["weight"], given=given["share"])
    since, baseline = time.time(), __salt__["cabify_lb.role_counters"](pool)
    started = time.monotonic()
    end = started + float(step["pause"])
    limit = end + float(analysis["inconclusive_limit"])
    while True:
        asked = _watch(
            pool, canaries, min(float(analysis["interval"]), max(0.0, end - time.monotonic())), fence
        )
        if asked:
            return asked
        numbers = __salt__["cabify_lb.figures"](pool, since, baseline, given["share"])
        live["figures"] = {k: numbers[k] for k in ("stable", "canary", "share")}
        _publish(pool, live, "analysis", number=live["step"])
        broken = __utils__["cabify_analysis.judge"](numbers, analysis)
        if broken:
            raise Aborted(f"step {live['step']} (weight {step['weight']}%): {broken}")
        now = time.monotonic()
        if now < end:
            continue
        if __utils__["cabify_analysis.conclusive"](numbers, analysis):
            return None
        if now > limit:
            raise Aborted(
                f"step {live['step']} inconclusive: the canary had {numbers['canary']['requests']} "
                f"request(s) in {now - started:.0f}s, fewer than min_requests {analysis['min_requests']}"
            )
        live["phase"] = "inconclusive"
        _publish(pool, live)
        end = now + float(analysis["interval"])


def _abort(pool: str, live: dict, reason: str, drain_timeout: float, fence: dict) -> None:
    """The canaries removed (all of them leave Consul and HAProxy first, so their share
    goes to nothing at once), the weights cleared, Consul reconciled: each step retried
    and run whatever the others did, so that one stuck step never leaves the rest
    undone; the stable replicas never stop serving. Raises at the end, naming every
    step that kept failing."""
    live.update(phase="aborting", reason=reason)
    _quietly("publishing the abort", _publish, pool, live, "aborting", reason=reason)
    _failpoint("release.abort")
    problems = _steps(
        ("removing the canaries", _pool, "remove_role", pool, "canary", drain_timeout, fence),
        ("clearing the weights", _pool, "clear_weights", pool),
        ("reconciling", _pool, "reconcile", pool),
    )
    live.update(phase="aborted" if not problems else "abort incomplete", weight=0)
    _quietly("publishing the abort", _publish, pool, live, "aborted", reason=reason)
    if problems:
        raise CommandExecutionError("; ".join(problems))


def _abort_or_say(pool: str, live: dict, reason: str, settings: dict, fence: dict, cause: Exception) -> None:
    """Abort the canary for REASON and raise it; if the abort itself keeps failing,
    raise saying both."""
    try:
        _abort(pool, live, reason, settings["drain_timeout"], fence)
    except Exception as err:  # noqa: BLE001 - whatever kept failing is part of the reason
        raise CommandExecutionError(f"{reason}; the abort is incomplete: {err}") from cause
    raise CommandExecutionError(reason) from cause


def _canary(pool: str, version: str, settings: dict, release: dict, fence: dict) -> dict:
    canary_settings = settings["canary"]
    count = int(canary_settings["replicas"])
    stable = [r for r in _pool("running", pool) if r["role"] == "stable"]
    if not stable:
        raise CommandExecutionError(
            f"a canary needs stable replicas of pool {pool} running beside it; none run"
        )
    spec = __utils__["cabify_plan.spec_hash"](version, settings["env"], settings["resources"])
    _consul("kv_delete", _kv("canary_command", pool))
    live: dict[str, Any] = {
        "release": release["id"],
        "version": version,
        "phase": "starting",
        "step": 0,
        "steps": canary_settings["steps"],
        "weight": 0,
        "figures": {},
        "canaries": [],
    }
    _publish(pool, live, "canary-start", replicas=count)
    canaries: list[str] = []
    try:
        try:
            __salt__["cabify_docker.network_present"](settings["network"], pool)
            # Weights first: the stable replicas take theirs, and each canary is
            # registered with its own from the start, so it never gets more than the
            # first step's share.
            first = canary_settings["steps"][0]["weight"]
            _pool("set_weights", pool, first, spec, release["id"], {"new": count, "old": len(stable)})
            for _ in range(count):
                replica = _pool(
                    "start",
                    pool,
                    version,
                    "canary",
                    settings["env"],
                    settings["resources"],
                    settings["network"],
                    fence,
                )
                canaries.append(replica["name"])
            live["canaries"] = canaries
            _pool(
                "wait_healthy",
                pool,
                canaries,
                timeout=settings["healthy_deadline"],
                min_healthy_time=settings["min_healthy_time"],
                fence=fence,
            )
            asked = None
            for number, step in enumerate(canary_settings["steps"], start=1):
                live["step"] = number
                asked = _step(pool, live, canaries, step, settings, fence, spec)
                if asked == "promote":
                    break
            if asked != "promote" and not canary_settings["auto_promote"]:
                live["phase"] = "waiting for promote"
                _publish(pool, live, "waiting", promote_timeout=canary_settings["promote_timeout"])
                if _watch(pool, canaries, float(canary_settings["promote_timeout"]), fence) != "promote":
                    raise Aborted(
                        f"not promoted within promote_timeout {canary_settings['promote_timeout']}s"
                    )
        except Exception as err:  # a threshold, a crash, the operator, Docker or Consul
            if not _lock_still_held(fence):
                raise
            _abort_or_say(pool, live, f"canary of version {version} aborted: {err}", settings, fence, err)
        # Promotion: the weights stay as the last step left them, so every new stable
        # replica joins at the canary's per-replica weight and every old one that goes
        # takes its weight along: the new version's share only rises, to 100 %.
        live["phase"] = "promoting"
        _quietly("publishing the promotion", _publish, pool, live, "promoting")
        try:
            rolled = _roll(pool, version, settings, release, fence, role="stable")
        except Exception as err:
            if not _lock_still_held(fence):
                raise
            # The rolling machinery gave the stable pool back; the canaries go too.
            _abort_or_say(
                pool, live, f"canary of version {version} not promoted: {err}", settings, fence, err
            )
        # The new version serves alone: the canaries and the weights go, each step
        # retried and run whatever the others did.
        removed = [r["name"] for r in __salt__["cabify_docker.replicas"](pool) if r["role"] == "canary"]
        problems = _steps(
            ("removing the canaries", _pool, "remove_role", pool, "canary", settings["drain_timeout"], fence),
            ("clearing the weights", _pool, "clear_weights", pool),
            ("reconciling", _pool, "reconcile", pool),
        )
        live["phase"] = "promoted"
        _quietly("publishing the promotion", _publish, pool, live, "promoted")
        if problems:
            raise CommandExecutionError(
                f"canary of version {version} promoted, but its cleanup is incomplete: {'; '.join(problems)}"
            )
    finally:
        _quietly("clearing the operator's command", _consul, "kv_delete", _kv("canary_command", pool))
    return {"started": rolled["started"], "removed": rolled["removed"] + removed, "canaries": canaries}


# --- recovery ------------------------------------------------------------------------------------


def recover(pool: str) -> dict:
    """
    Finish what a release of POOL whose process died left behind, when no release holds
    the pool's lock (a release of this host whose process is gone lets go of it at once;
    the recovery takes it meanwhile): canary replicas are removed,
    stored weights cleared, the canary's state marked interrupted, and its history
    record (still ``running``) marked
    ``interrupted`` with the phase it died in. Returns what it did (empty: nothing to do).

    CLI Example:

    .. code-block:: bash

        salt-call cabify_release.recover cabify
    """
    current = holder(pool)
    if _dead(current):
        # Its process is gone (it ran here): its lock would only expire later.
        log.warning("cabify: pool %s: release %s died with its lock; releasing it", pool, current.get("id"))
        _consul("lock_release", _kv("lock", pool), current["session"])
        current = holder(pool)
    if current is not None:  # a running release: nothing is left behind
        return {"skipped": f"release {current.get('id')} holds the lock"}
    # The pool's own lock for the recovery: no release starts (on any host) under it.
    recovery = {
        "id": f"recovery-{secrets.token_hex(2)}",
        "minion": __grains__.get("id"),
        "strategy": "recovery",
    }
    key = _kv("lock", pool)
    session = _consul("lock_acquire", key, recovery, 10)
    if session is None:
        current = holder(pool) or {}
        return {"skipped": f"release {current.get('id')} holds the lock"}
    try:
        with __utils__["cabify_hostlock.hold"](pool):
            return _recover(pool, by=__grains__.get("id"))
    finally:
        _quietly("releasing the lock", _consul, "lock_release", key, session)


def _dead(current: dict | None) -> bool:
    """The lock holder CURRENT is a release of this host whose process is gone."""
    if not current or current.get("minion") != __grains__.get("id") or not current.get("pid"):
        return False
    return __utils__["cabify_tasks.process_gone"](current["pid"])


def needs_recovery(pool: str) -> bool:
    """
    True when POOL shows what a dead release leaves behind (canary replicas, stored
    weights, a running canary state or history record) and no release holds its lock,
    or when the release that holds it ran on this host and its process is gone.

    CLI Example:

    .. code-block:: bash

        salt-call cabify_release.needs_recovery cabify
    """
    current = holder(pool)
    if current is not None:
        return _dead(current)
    if any(r["role"] == "canary" for r in __salt__["cabify_docker.replicas"](pool)):
        return True
    if _pool("weights", pool) is not None:
        return True
    live = _consul("kv_get", _kv("canary_state", pool)) or {}
    return live.get("phase") in _UNFINISHED_PHASES


def _recover(pool: str, by: str | None) -> dict:
    """The work of :py:func:`recover`; the caller holds the host lock and made sure no
    other release holds the Consul lock."""
    done: dict[str, Any] = {}
    live = _consul("kv_get", _kv("canary_state", pool)) or {}
    phase = live.get("phase")
    canaries = [r["name"] for r in __salt__["cabify_docker.replicas"](pool) if r["role"] == "canary"]
    if canaries:
        for name in canaries:
            _consul("deregister", name)
        _pool("clear_weights", pool)
        for name in canaries:
            _pool("drain", pool, name, drain_timeout=0)
        done["canaries_removed"] = canaries
    if _pool("weights", pool) is not None:
        _pool("clear_weights", pool)
        done["weights_cleared"] = True
    if phase in _UNFINISHED_PHASES:
        live.update(
            phase="interrupted", reason=f"its release ended during phase {phase!r}; recovered by {by}"
        )
        _publish(pool, live)
        done["canary_state"] = f"was {phase}"
    for entry in history(pool):
        if entry.get("result") == "running" and entry["id"] != by:
            where = f" during canary phase {phase!r}" if phase and entry["id"] == live.get("release") else ""
            entry.update(
                result="interrupted",
                reason=f"its process ended without an end record{where}; recovered by {by}",
                ended=entry.get("ended") or _now(),
            )
            record(pool, entry)
            done.setdefault("interrupted", []).append(entry["id"])
    if done:
        _pool("reconcile", pool)
        log.warning("cabify: pool %s: recovered after a release that died: %s", pool, done)
    return done
