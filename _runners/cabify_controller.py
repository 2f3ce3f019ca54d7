"""
The release controller: a release of a pool across the fleet, decided on the master.

.. code-block:: bash

    salt-run cabify.release cabify 2                      # what operators call
    salt-run cabify_controller.rolling cabify 2 settings='{max_parallel: 2}'

One controller holds the pool's lock (``cabify/locks/<pool>``, a Consul session it
renews) and its journal (``cabify/journal/<pool>``, written before each step), and
drives the app hosts and the LBs through Salt, batch by batch across hosts:

1. every app host says its part (``cabify_pool.release_plan``): the replicas to keep,
   how many to start, the old ones to drain. The units (one new replica, one old one)
   go round the hosts, ``max_parallel`` of them a batch, counted fleet-wide
   (``host_by_host: true`` takes one host after the other);
2. a batch starts its new replicas on their hosts (``cabify_pool.start``, given the
   release's fence: each host checks that the release still holds the lock), waits
   until they pass in Consul, then until every LB's server list agrees with Consul
   (the barrier: the new replicas UP, nothing else UP, the weights Consul gives), and
   holds that for ``min_healthy_time``. A late LB is named;
3. then its old replicas are drained on every LB, deregistered on their hosts, and
   waited for until every LB shows 0 sessions on them (``drain_timeout`` is a cap),
   then stopped (SIGTERM) in the background while the next batch starts.

Any failure reverts (``auto_revert``, the default): the old replicas come back (taken
out of drain, registered again, or started again from their spec), every LB agrees
again, and only then the new ones go the way old ones do. The outcome is recorded in
the pool's history; progress goes out as events ``cabify/release/<id>/<step>`` and,
under ``salt-run``, as progress lines.

The master's configuration says where the fleet is:

.. code-block:: yaml

    cabify_controller:
      consul:
        hosts: [10.213.0.11, 10.213.0.12, 10.213.0.13]   # tried in turn; default 127.0.0.1
        port: 8500
        token: null
      app_target: G@roles:app      # compound targets
      lb_target: G@roles:lb
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import queue
import secrets
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import salt.client
import salt.utils.event
from salt.exceptions import CommandExecutionError

try:
    import consul  # noqa: F401 - the client comes from cabify_kv

    HAS_CONSUL = True
except ImportError:
    HAS_CONSUL = False

log = logging.getLogger(__name__)

__virtualname__ = "cabify_controller"

HISTORY_KEEP = 100
# Seconds a Salt call to a host may take when it only looks or does one quick thing.
QUICK = 30
# How often the barrier asks the LBs again.
BARRIER_POLL = 0.2


def __virtual__():
    if not HAS_CONSUL:
        return (False, "cabify_controller runner: py-consul is not installed in Salt's venv")
    return __virtualname__


def _kv(func: str, *args) -> Any:
    return __utils__[f"cabify_kv.{func}"](*args)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def config() -> dict:
    """
    Where the controller finds the fleet: Consul's hosts (tried in turn), port and
    token, and the compound targets of the app hosts and of the LBs (master
    configuration ``cabify_controller``).

    CLI Example:

    .. code-block:: bash

        salt-run cabify_controller.config
    """
    return _kv("controller_config", __opts__)


def consul_client():
    """The first Consul of ``cabify_controller:consul:hosts`` that answers with a leader."""
    return _kv("fleet_client", __opts__)


def targets(target: str) -> list[str]:
    """
    The minions a compound TARGET matches (the master's view: accepted keys, grains
    cache).

    CLI Example:

    .. code-block:: bash

        salt-run cabify_controller.targets G@roles:lb
    """
    client = salt.client.get_local_client(__opts__["conf_file"])
    try:
        found = client.gather_minions(target, "compound")
    finally:
        client.destroy()
    return sorted(found.get("minions", []) if isinstance(found, dict) else found)


def _salt(
    hosts: list[str],
    fun: str,
    args: list | None = None,
    kwargs: dict | None = None,
    timeout: float = QUICK,
    check: bool = True,
) -> dict:
    """FUN run on each of HOSTS at once; their returns by host. Raises naming every host
    that failed or did not answer within TIMEOUT seconds (of silence: Salt asks a host
    whose job still runs). Without CHECK, the full returns (``ret``, ``retcode``) of
    those that answered."""
    if not hosts:
        return {}
    client = salt.client.get_local_client(__opts__["conf_file"])
    try:
        out = client.cmd(
            list(hosts),
            fun,
            list(args or []),
            tgt_type="list",
            kwarg=kwargs or None,
            timeout=timeout,
            full_return=True,
        )
    finally:
        client.destroy()
    if not check:
        return out
    problems = [f"{host}: {fun}: no answer within {timeout}s" for host in hosts if host not in out]
    problems += [
        f"{host}: {fun}: {ret.get('ret')}"
        for host, ret in sorted(out.items())
        if not isinstance(ret, dict) or ret.get("retcode")
    ]
    if problems:
        raise CommandExecutionError("; ".join(problems))
    return {host: ret["ret"] for host, ret in out.items()}


def _each(calls: list[tuple]) -> list:
    """Run each (func, *args) in its own thread; their results in order. Raises the
    errors of those that failed, all of them, once every one has ended."""
    if not calls:
        return []
    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        futures = [pool.submit(contextvars.copy_context().run, *call) for call in calls]
    errors = [str(f.exception()) for f in futures if f.exception() is not None]
    if errors:
        raise CommandExecutionError("; ".join(errors))
    return [f.result() for f in futures]


class Skipped(Exception):
    """The release asked for has nothing to do: its trigger was handled already."""


class _Renewal:
    """Renews the lock's session every TTL/3 until stopped; remembers when Consul no
    longer knows it (the lock is gone)."""

    def __init__(self, client, session: str, ttl: int):
        self.client, self.session, self.ttl = client, session, ttl
        self.stop = threading.Event()
        self.lost = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(self.ttl / 3):
            try:
                if not self.client.session.renew(self.session):
                    self.lost.set()
                    return
            except Exception as err:  # noqa: BLE001 - a NotFound is a lost lock, the rest is retried
                if type(err).__name__ == "NotFound":
                    self.lost.set()
                    return
                log.warning("cabify controller: renewing session %s failed: %s", self.session, err)


class Release:
    """One fleet release of a pool: its lock, journal, record and progress."""

    def __init__(self, pool: str, version: str, strategy: str, request: dict):
        self.pool, self.version, self.strategy, self.request = pool, str(version), strategy, request
        self.conf = config()
        self.consul = consul_client()
        self.apps = targets(self.conf["app_target"])
        self.lbs = targets(self.conf["lb_target"])
        if not self.apps:
            raise CommandExecutionError(
                f"no app host matches {self.conf['app_target']} (cabify_controller:app_target)"
            )
        if not self.lbs:
            raise CommandExecutionError(
                f"no LB host matches {self.conf['lb_target']} (cabify_controller:lb_target)"
            )
        self.id = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + secrets.token_hex(2)
        self.fence: dict = {}
        self.record: dict[str, Any] = {
            "id": self.id,
            "pool": pool,
            "minion": __opts__.get("id"),
            "controller": True,
            "strategy": strategy,
            "from": [],
            "to": self.version,
            "started": _now(),
            "started_at": time.time(),
            "ended": None,
            "ended_at": None,
            "result": "running",
            "reason": "",
            "hosts": self.apps,
            "lbs": self.lbs,
        }
        self.journal: dict[str, Any] = {
            "release": self.id,
            "pool": pool,
            "to": self.version,
            "phase": "planning",
        }
        self.stops = __utils__["cabify_tasks.background"]()
        self._bus = None
        self.webhooks: list[str] = list((request.get("release_settings") or {}).get("webhooks") or [])
        self.notices: queue.Queue = queue.Queue()
        self.notifier: threading.Thread | None = None

    # --- progress, journal, record -------------------------------------------------------

    def progress(self, step: str, **data: Any) -> None:
        """An event ``cabify/release/<id>/<step>`` on the master's bus (``salt-run
        state.event 'cabify/release/*'`` follows them), a log line, and a notice for the
        webhooks. Never raises: progress is told, never in the way."""
        log.info("cabify release %s of pool %s: %s %s", self.id, self.pool, step, data)
        try:
            if self._bus is None:
                self._bus = salt.utils.event.get_master_event(__opts__, __opts__["sock_dir"], listen=False)
            self._bus.fire_event({"pool": self.pool, **data}, f"cabify/release/{self.id}/{step}")
        except Exception as err:  # noqa: BLE001 - told in the log instead
            log.warning("cabify controller: sending event %s failed: %s", step, err)
        if self.webhooks:
            self.notices.put(self.notice(step, data))

    def notice(self, step: str, data: dict) -> dict:
        """The JSON a webhook gets for STEP: the release, pool, version, step and time,
        and the step's DATA (the release's record at start and end as ``record``; the
        release a recovery reverts as ``recovering``)."""
        told = dict(data)
        if "release" in told:
            value = told.pop("release")
            told["record" if isinstance(value, dict) else "recovering"] = value
        return {"release": self.id, "pool": self.pool, "to": self.version, "step": step, "at": _now(), **told}

    def _notify(self) -> None:
        """Post each notice to every webhook, in order, in a thread of its own: a slow
        or dead receiver never holds the release up (each post has 2 s, then it is
        logged and dropped)."""
        while (body := self.notices.get()) is not None:
            payload = json.dumps(body, default=str).encode()
            for url in self.webhooks:
                request = urllib.request.Request(  # noqa: S310 - http(s) only, see start_notices
                    url, data=payload, method="POST", headers={"Content-Type": "application/json"}
                )
                try:
                    with urllib.request.urlopen(request, timeout=2):  # noqa: S310 - http(s) only
                        pass
                except (OSError, ValueError) as err:
                    log.warning("cabify controller: webhook %s: %s %s: %s", url, self.id, body["step"], err)

    def start_notices(self, webhooks: list[str]) -> None:
        """Webhook URLs (release setting ``webhooks``) get a JSON post per step."""
        self.webhooks = [str(url) for url in webhooks or []]
        wrong = [url for url in self.webhooks if not url.startswith(("http://", "https://"))]
        if wrong:
            raise CommandExecutionError(f"release:webhooks: must be http(s) URLs (got {wrong})")
        if self.webhooks and self.notifier is None:
            self.notifier = threading.Thread(target=self._notify, daemon=True)
            self.notifier.start()

    def stop_notices(self, timeout: float = 10) -> None:
        if self.notifier is not None:
            self.notices.put(None)
            self.notifier.join(timeout)

    def put(self, key: str, value: Any) -> None:
        self.consul.kv.put(key, _kv("encode", value))

    def save(self, **changes: Any) -> None:
        """The journal, written before the step it names is taken."""
        self.journal.update(changes, updated=_now())
        self.put(_kv("journal", self.pool), self.journal)

    # --- the lock ---------------------------------------------------------------------------

    def lock(self, ttl: int) -> None:
        key = _kv("lock", self.pool)
        session = self.consul.session.create(
            name=f"release {self.id} of {self.pool}", behavior="delete", ttl=ttl, lock_delay=0, checks=[]
        )
        holder = {k: self.record[k] for k in ("id", "minion", "strategy", "to", "started", "controller")}
        # The controller's process: one that died on this master is known at once (see
        # recover), not only once its session expires.
        holder["pid"] = os.getpid()
        if not self.consul.kv.put(key, _kv("encode", holder), acquire=session):
            self.consul.session.destroy(session)
            _, entry = self.consul.kv.get(key)
            other = _kv("decode", (entry or {}).get("Value")) or {}
            if self.request.get("trigger") and other.get("to") == self.version:
                raise Skipped(
                    f"release {other.get('id')} to version {self.version} is running: this change is its"
                )
            raise CommandExecutionError(
                f"another release of pool {self.pool} is running: release {other.get('id')} to version "
                f"{other.get('to')} on {other.get('minion')}, started {other.get('started')}"
            )
        self.fence = {"key": key, "session": session, "release": self.id}

    def held(self) -> bool:
        try:
            _, entry = self.consul.kv.get(self.fence["key"])
        except Exception:  # noqa: BLE001 - Consul unreachable: the error is the reason, not the lock
            return True
        return bool(entry and entry.get("Session") == self.fence["session"])

    def claim_trigger(self) -> None:
        """A release asked for by a change of the KV key ``trigger`` (each minion's
        beacon sees it, and the reactor asks once for each): the first one to get here
        under the lock takes the change, the others are skipped, and so is one whose
        change was overtaken by a newer one (that one releases)."""
        key = self.request.get("trigger")
        if not key:
            return
        _, entry = self.consul.kv.get(key)
        if entry is None:
            raise Skipped(f"{key} is gone: nothing to release")
        value = _kv("decode", entry.get("Value"))
        version = str(value.get("version") if isinstance(value, dict) else value)
        if version != self.version:
            raise Skipped(f"{key} says {version} now, not {self.version}: the newer change releases")
        claims = _kv("trigger", self.pool)
        _, claimed = self.consul.kv.get(claims)
        seen = _kv("decode", (claimed or {}).get("Value")) or {}
        if int(seen.get("index", -1)) >= int(entry["ModifyIndex"]):
            raise Skipped(f"change {entry['ModifyIndex']} of {key} was released by {seen.get('release')}")
        self.put(claims, {"key": key, "index": entry["ModifyIndex"], "release": self.id, "skipped": []})

    def note_skip(self, reason: str) -> None:
        """Count a trigger that was skipped in the claim (``skipped``, the newest 20):
        how many times a change was asked for, beside the one release it made."""
        claims = _kv("trigger", self.pool)
        for _ in range(10):
            _, entry = self.consul.kv.get(claims)
            seen = _kv("decode", (entry or {}).get("Value")) or {}
            skipped = [*seen.get("skipped", []), {"id": self.id, "at": _now(), "reason": reason}][-20:]
            if self.consul.kv.put(
                claims, _kv("encode", {**seen, "skipped": skipped}), cas=(entry or {}).get("ModifyIndex", 0)
            ):
                return
        log.warning("cabify controller: could not count the skip of %s", self.id)

    def released(self) -> None:
        """What this release set becomes the pool's version in pillar (ext_pillar
        cabify_released): a plain highstate keeps it."""
        _, entry = self.consul.kv.get(_kv("released", self.pool))
        before = _kv("decode", (entry or {}).get("Value")) or {}
        env = self.request.get("env")
        value = {"version": self.version, "release": self.id, "at": _now()}
        if env is not None or isinstance(before.get("env"), dict):
            value["env"] = env if env is not None else before["env"]
        self.put(_kv("released", self.pool), value)

    def run(self, body) -> dict:
        """Take the lock, run BODY under it, record the outcome whatever it is."""
        settings = self.request.get("release_settings") or {}
        ttl = max(10, int(settings.get("lock_ttl", 30)))
        self.start_notices(self.webhooks)
        self.lock(ttl)
        try:
            self.claim_trigger()
        except Exception:
            self._quietly("releasing the lock", self.consul.session.destroy, self.fence["session"])
            raise
        renewal = _Renewal(self.consul, self.fence["session"], ttl)
        try:
            self.put(_kv("history", self.pool, self.id), self.record)
            self.progress("start", release=self.record)
            self.record["replicas"] = body()
            if self.strategy != "recovery":
                self.released()
            self.record["result"] = "succeeded"
        except Exception as err:
            lost = renewal.lost.is_set() or not self.held()
            reason = f"lost its lock: {err}" if lost and "lost its lock" not in str(err) else str(err)
            self.record.update(result="failed", reason=reason)
            raise CommandExecutionError(reason) from err
        finally:
            if self.record["result"] == "running":
                self.record.update(result="failed", reason="interrupted")
            self.record.update(ended=_now(), ended_at=time.time())
            renewal.stop.set()
            self._quietly("recording the release", self.put, _kv("history", self.pool, self.id), self.record)
            self._quietly("closing the journal", self.consul.kv.delete, _kv("journal", self.pool))
            self._quietly("clearing the commands", self.consul.kv.delete, _kv("command", self.pool))
            if not renewal.lost.is_set():
                self._quietly("releasing the lock", self.consul.session.destroy, self.fence["session"])
            self.progress("end", release=self.record)
            self.stop_notices()
            self._quietly("pruning the history", self.prune)
        return self.record

    def prune(self) -> None:
        _, entries = self.consul.kv.get(_kv("history", self.pool), recurse=True)
        records = [r for r in (_kv("decode", e.get("Value")) for e in entries or []) if isinstance(r, dict)]
        records.sort(key=lambda r: r["id"], reverse=True)
        for old in records[HISTORY_KEEP:]:
            if old.get("result") != "running":
                self.consul.kv.delete(_kv("history", self.pool, old["id"]))

    @staticmethod
    def _quietly(what: str, func, *args) -> Any:
        for attempt in range(1, 4):
            try:
                return func(*args)
            except Exception as err:  # noqa: BLE001 - logged; the outcome stands
                log.warning("cabify controller: %s failed (attempt %s): %s", what, attempt, err)
                time.sleep(0.5 * attempt)
        return None

    # --- what Consul and the LBs say ----------------------------------------------------------

    def instances(self, passing_only: bool = True) -> dict[str, dict]:
        """The pool's instances in the catalog by ID (the replica's name)."""
        _, nodes = self.consul.health.service(self.pool, passing=passing_only)
        return {
            n["Service"]["ID"]: {
                "address": f"{n['Service']['Address']}:{n['Service']['Port']}",
                "weight": (n["Service"].get("Weights") or {}).get("Passing"),
                "node": n["Node"]["Node"],
            }
            for n in nodes
        }

    def barrier(self, timeout: float, must_pass: list[str] = ()) -> float:
        """Wait until every LB's servers agree with Consul (and MUST_PASS pass there);
        the seconds it took. Raises naming the LBs that are late after TIMEOUT."""
        started = time.monotonic()
        said = None
        while True:
            passing = self.instances()
            late = {"consul": [f"{n} not passing" for n in must_pass if n not in passing]}
            if not late["consul"]:
                expected = {i["address"]: i["weight"] for i in passing.values()}
                answers = _salt(self.lbs, "cabify_lb.agreement", [self.pool, expected])
                late = {lb: problems for lb, problems in answers.items() if problems}
            late = {k: v for k, v in late.items() if v}
            waited = time.monotonic() - started
            if not late:
                return round(waited, 2)
            if waited > timeout:
                raise CommandExecutionError(
                    f"the LBs do not agree with Consul after {timeout:g}s: "
                    + "; ".join(f"{lb}: {', '.join(p)}" for lb, p in sorted(late.items()))
                )
            if sorted(late) != said:
                said = sorted(late)
                self.progress("barrier-wait", late=late)
            time.sleep(BARRIER_POLL)

    # --- steps ------------------------------------------------------------------------------

    def start(self, host: str, part: dict, count: int) -> list[str]:
        names = []
        settings = part["settings"]
        for _ in range(count):
            started = _salt(
                [host],
                "cabify_pool.start",
                [
                    self.pool,
                    self.version,
                    "stable",
                    part["env"],
                    settings.get("resources"),
                    settings["network"],
                ],
                {"fence": self.fence},
                timeout=120,
            )[host]
            names.append(started["name"])
            self.journal["started"].setdefault(host, []).append(started["name"])
            self.save()
        return names

    def wait_healthy(self, new: dict[str, list[str]], settings: dict, crash_on_restart: bool = True) -> None:
        """NEW (names by host) pass their checks (each host watches its own for a
        crash), then every LB has them UP, for MIN_HEALTHY_TIME."""
        deadline = float(settings["healthy_deadline"])
        _each(
            [
                (
                    _salt,
                    [host],
                    "cabify_pool.wait_healthy",
                    [self.pool, names],
                    {"timeout": deadline, "fence": self.fence, "crash_on_restart": crash_on_restart},
                    deadline + QUICK,
                )
                for host, names in sorted(new.items())
                if names
            ]
        )
        names = [n for found in new.values() for n in found]
        waited = self.barrier(deadline, names)
        self.progress("barrier", replicas=names, seconds=waited)
        hold = float(settings["min_healthy_time"])
        if hold > 0:
            held_since = time.monotonic()
            while time.monotonic() - held_since < hold:
                self.barrier(deadline, names)
                time.sleep(BARRIER_POLL)

    def drain(self, old: dict[str, list[str]], drain_timeout: float, stop_now: bool = False) -> dict:
        """OLD (names by host) out of service with no failed request: drained on every
        LB, deregistered on their hosts, waited for until every LB shows 0 sessions on
        them (DRAIN_TIMEOUT at most), then stopped (in the background unless STOP_NOW)."""
        names = [n for found in old.values() for n in found]
        known = self.instances(passing_only=False)
        addresses = [known[n]["address"] for n in names if n in known]
        slots = _salt(self.lbs, "cabify_lb.drain_servers", [self.pool, addresses]) if addresses else {}
        _each(
            [
                (_salt, [host], "cabify_pool.deregister", [self.pool, found], {"fence": self.fence})
                for host, found in sorted(old.items())
                if found
            ]
        )
        by_lb = {lb: sorted(found.values()) for lb, found in slots.items()}
        idle = (
            _salt(
                self.lbs,
                "cabify_lb.wait_slots_idle",
                [self.pool, by_lb, drain_timeout],
                timeout=drain_timeout + QUICK,
            )
            if any(by_lb.values())
            else {}
        )
        self.record.setdefault("drains", []).append({"replicas": names, "lbs": idle})
        self.progress("drained", replicas=names, lbs=idle)
        stop_timeout = 2.0 + (0 if all(i.get("idle") for i in idle.values()) else drain_timeout)
        for host, found in sorted(old.items()):
            for name in found:
                if stop_now:
                    _salt(
                        [host],
                        "cabify_docker.stop_replica",
                        [name, stop_timeout],
                        timeout=stop_timeout + QUICK,
                    )
                else:
                    self._stop_later(host, name, stop_timeout)
        return idle

    def _stop_later(self, host: str, name: str, timeout: float) -> None:
        self.stops.start(
            f"stopping {name} on {host}",
            _salt,
            [host],
            "cabify_docker.stop_replica",
            [name, timeout],
            timeout=timeout + QUICK,
        )

    def wait_stops(self) -> None:
        self.stops.wait()

    def prepare(self) -> None:
        """The version's image on every app host (cabify.install with the pool at the
        version: built there, or pulled from the fleet's registry by digest), and the
        pool's pillar valid there."""
        self.progress("prepare", version=self.version, hosts=self.apps)
        pillar = {"cabify": {"pools": {self.pool: {"version": self.version}}}}
        out = _salt(self.apps, "state.sls", ["cabify.install"], {"pillar": pillar}, timeout=600, check=False)
        problems = [f"{host}: no answer" for host in self.apps if host not in out]
        for host, ret in sorted(out.items()):
            states = ret.get("ret") if isinstance(ret, dict) else ret
            if not isinstance(states, dict):
                problems.append(f"{host}: {states}")
                continue
            problems += [
                f"{host}: {state.get('comment')}"
                for state in states.values()
                if isinstance(state, dict) and state.get("result") is False
            ]
        if problems:
            raise CommandExecutionError(
                f"version {self.version} cannot run on every app host: " + "; ".join(problems)
            )

    def command(self) -> str | None:
        """The operator's command for this release (``salt-run cabify.pause``, ``resume``,
        ``abort``), if any."""
        _, entry = self.consul.kv.get(_kv("command", self.pool))
        value = _kv("decode", (entry or {}).get("Value"))
        return value.get("command") if isinstance(value, dict) and value.get("release") == self.id else None

    def gate(self, number: int) -> None:
        """Before batch NUMBER: stop here while the operator paused the release (the
        lock is kept, the pool serves as it is), go on when resumed, and stop (and
        revert) when aborted."""
        asked = self.command()
        if asked == "pause":
            # The last batch's old replicas finish stopping first: a paused pool holds still.
            self.wait_stops()
            phase = self.journal.get("phase")
            self.save(phase="paused", paused_at=_now())
            self.progress("paused", batch=number)
            while (asked := self.command()) == "pause":
                if not self.held():
                    raise CommandExecutionError(f"release {self.id} lost its lock while paused")
                time.sleep(0.5)
            self.save(phase=phase, paused_at=None)
            self.progress("resumed", batch=number)
        if asked == "abort":
            raise CommandExecutionError("aborted by the operator (cabify.abort)")

    def wait_for_jobs_of(self, release: str, timeout: float = 60) -> None:
        """Wait (up to TIMEOUT s) until no host still runs a step that RELEASE's dead
        controller asked for (a replica it was starting is then there to be removed)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            jobs = _salt(self.apps + self.lbs, "saltutil.running", check=False)
            busy = [
                host
                for host, ret in jobs.items()
                for job in (ret.get("ret") if isinstance(ret, dict) else None) or []
                if isinstance(job, dict)
                and str(job.get("fun", "")).startswith(("cabify_pool.", "cabify_docker.", "cabify_lb."))
                and release in str(job.get("arg"))
            ]
            if not busy:
                return
            self.progress("recovery-wait", release=release, hosts=sorted(set(busy)))
            time.sleep(1)

    def strays(self, journal: dict) -> dict[str, list[str]]:
        """The replicas the dead release started: those its journal names, and any
        other replica of the pool on a host that was not there before it began (one
        whose start was under way when the controller died)."""
        started = {host: list(names) for host, names in (journal.get("started") or {}).items()}
        before = journal.get("before")
        if before is None:
            return started
        drained = set(journal.get("drained") or {})
        now = _salt(self.apps, "cabify_docker.replicas", [self.pool])
        for host, replicas in now.items():
            for replica in replicas:
                name = replica["name"]
                if (
                    name not in before.get(host, [])
                    and name not in drained
                    and name not in started.get(host, [])
                ):
                    started.setdefault(host, []).append(name)
        return started

    def revert_journal(self) -> dict:
        """A recovery: revert what the release of the journal left, and close its record."""
        journal = self.request["journal"]
        dead = journal.get("record") or {"id": journal["release"], "pool": self.pool, "to": journal.get("to")}
        self.record.update(to=dead.get("to"), recovering=dead["id"])
        self.progress(
            "recovering", release=dead["id"], phase=journal.get("phase"), batch=journal.get("batch")
        )
        settings = journal.get("settings") or {"healthy_deadline": 60, "min_healthy_time": 0}
        self.wait_for_jobs_of(dead["id"])
        started = self.strays(journal)
        summary = self.revert(started, journal.get("drained") or {}, settings)
        dead.update(
            result="interrupted",
            reason=f"its controller died during batch {journal.get('batch')} ({journal.get('phase')}); "
            f"recovery {self.id} reverted it: {summary}",
            ended=_now(),
            ended_at=time.time(),
        )
        self.put(_kv("history", self.pool, dead["id"]), dead)
        if "incomplete" in summary:
            raise CommandExecutionError(f"recovery of release {dead['id']}: {summary}")
        return {"reverted": dead["id"], "summary": summary}

    # --- rolling ----------------------------------------------------------------------------

    def roll(self) -> dict:
        self.prepare()
        parts = _salt(
            self.apps,
            "cabify_pool.release_plan",
            [self.pool, self.version],
            {"release": self.request.get("release_settings"), "env": self.request.get("env")},
        )
        settings = parts[self.apps[0]]["settings"]["release"]
        self.start_notices(settings.get("webhooks"))
        drain_timeout = float(parts[self.apps[0]]["settings"]["drain_timeout"])
        self.record["from"] = sorted({v for part in parts.values() for v in part["versions"]})
        batches = __utils__["cabify_plan.fleet_batches"](
            parts, settings["max_parallel"], bool(settings.get("host_by_host"))
        )
        self.save(
            phase="rolling",
            batches=batches,
            batch=0,
            started={},
            drained={},
            settings={**settings, "drain_timeout": drain_timeout},
            record=self.record,
            before={host: part["keep"] + part["old"] for host, part in parts.items()},
        )
        self.progress("plan", version=self.version, batches=batches)
        for host, part in sorted(parts.items()):
            for name in part["remove_stopped"]:
                _salt(
                    [host], "cabify_pool.drain", [self.pool, name], {"drain_timeout": 0, "fence": self.fence}
                )
        started: dict[str, list[str]] = {}
        drained: dict[str, dict] = {}
        for number, batch in enumerate(batches, start=1):
            self.save(batch=number, of=len(batches))
            try:
                self.gate(number)
                self.progress("batch", number=number, of=len(batches), units=batch)
                new: dict[str, list[str]] = {}
                for host, names in zip(
                    sorted({u["host"] for u in batch}),
                    _each(
                        [
                            (
                                self.start,
                                host,
                                parts[host],
                                sum(u["start"] for u in batch if u["host"] == host),
                            )
                            for host in sorted({u["host"] for u in batch})
                        ]
                    ),
                    strict=True,
                ):
                    new[host] = names
                    started.setdefault(host, []).extend(names)
                if any(new.values()):
                    self.wait_healthy(new, settings)
                    self.progress("batch-healthy", number=number, started=new)
                self.wait_stops()
                old = {}
                for unit in batch:
                    for name in unit["drain"]:
                        old.setdefault(unit["host"], []).append(name)
                        drained[name] = {
                            "host": unit["host"],
                            "spec": _salt([unit["host"]], "cabify_docker.clone_spec", [name])[unit["host"]],
                        }
                self.save(drained=drained, started=started)
                if old:
                    self.drain(old, drain_timeout)
            except Exception as err:  # whatever failed, the old version must keep serving
                self._quietly("stopping drained replicas", self.wait_stops)
                if not self.held():
                    raise
                self.progress("failed", batch=number, reason=str(err))
                stopped = f"release to version {self.version} stopped at batch {number}: {err}"
                if settings.get("auto_revert", True):
                    undone = self.revert(started, drained, {**settings, "drain_timeout": drain_timeout})
                    raise CommandExecutionError(f"{stopped}; reverted: {undone}") from err
                raise CommandExecutionError(f"{stopped}; not reverted (auto_revert is off)") from err
            self.progress(
                "batch-done", number=number, started=new, drained=[n for u in batch for n in u["drain"]]
            )
        self.wait_stops()
        _salt(self.apps, "cabify_pool.reconcile", [self.pool])
        self.barrier(float(settings["healthy_deadline"]))
        return {"started": started, "removed": list(drained)}

    def revert(self, started: dict[str, list[str]], drained: dict[str, dict], settings: dict) -> str:
        """Undo a release step by step, as a rolling release the other way: one old
        replica back (registered again, or started again from its spec) and UP on every
        LB, then one new one goes (drained on every LB like an old one), so that the
        pool never needs more LB slots than the release itself did. A pool that cannot
        get an old replica back keeps its new ones serving rather than shrink. Each
        step is retried; never raises: says what it did and what failed."""
        self.save(phase="reverting")
        problems: list[str] = []
        old = list(drained.items())
        new = [(host, name) for host, names in sorted(started.items()) for name in names]
        restored = removed = 0
        drain_timeout = float(settings.get("drain_timeout", 5))
        while (old or new) and not problems:
            if old:
                name, info = old.pop(0)
                host = info["host"]
                try:
                    back = self._retried(
                        f"giving back {name}",
                        _salt,
                        [host],
                        "cabify_pool.restore",
                        [self.pool, name, info["spec"]],
                        timeout=120,
                    )[host]
                    self.wait_healthy(
                        {host: [back]}, {**settings, "min_healthy_time": 0}, crash_on_restart=False
                    )
                    restored += 1
                except Exception as err:  # noqa: BLE001 - reported; the new ones keep serving
                    problems.append(f"could not give back {name}: {err}")
                    break
            if new:
                host, name = new.pop(0)
                try:
                    self._retried(
                        f"removing {name}", self.drain, {host: [name]}, drain_timeout, stop_now=True
                    )
                    removed += 1
                except Exception as err:  # noqa: BLE001 - reported
                    problems.append(f"could not remove new replica {name}: {err}")
        try:
            _salt(self.apps, "cabify_pool.reconcile", [self.pool])
        except Exception as err:  # noqa: BLE001 - reported
            problems.append(f"reconciling: {err}")
        summary = f"removed {removed} new replica(s), gave back {restored} old one(s)"
        self.progress("reverted", summary=summary, problems=problems)
        return summary + (f"; incomplete: {'; '.join(problems)}" if problems else "")

    @staticmethod
    def _retried(what: str, func, *args, **kwargs) -> Any:
        """FUNC tried up to 3 times with a short back-off; the last error is raised."""
        for attempt in range(1, 4):
            try:
                return func(*args, **kwargs)
            except Exception as err:
                if attempt == 3:
                    raise
                log.warning("cabify controller: %s failed (attempt %s of 3): %s", what, attempt, err)
                time.sleep(0.5 * attempt)
        return None


def rolling(
    pool: str,
    version: str,
    settings: dict | None = None,
    env: dict | None = None,
    trigger: str | None = None,
) -> dict:
    """
    Roll POOL to VERSION across the fleet, batch by batch, under the pool's lock, with
    its journal, recorded in history. SETTINGS override the pool's release settings
    (``max_parallel`` counted fleet-wide, ``host_by_host``, ``min_healthy_time``,
    ``healthy_deadline``, ``auto_revert``, ``lock_ttl``); ENV the replicas'
    environment. Fails naming the holder when another release of POOL runs. TRIGGER
    is the KV key whose change asked for it (the reactor): one release per change.

    CLI Example:

    .. code-block:: bash

        salt-run cabify_controller.rolling cabify 2
        salt-run cabify_controller.rolling cabify 2 settings='{max_parallel: 3}'
    """
    request = {"release_settings": settings or {}, "env": env, "trigger": trigger}
    return _outcome(pool, version, "rolling", request, "roll")


def _outcome(pool: str, version: str, strategy: str, request: dict, body: str) -> dict:
    """A release run: its record. One that failed (or could not start) sets the
    runner's return code, so that ``salt-run`` and an orchestration fail with it."""
    release = None
    try:
        release = Release(pool, version, strategy, request)
        return release.run(getattr(release, body))
    except Skipped as why:
        log.info("cabify controller: pool %s to %s: skipped: %s", pool, version, why)
        release._quietly("counting the skip", release.note_skip, str(why))
        return {"pool": pool, "to": str(version), "result": "skipped", "reason": str(why)}
    except CommandExecutionError as err:
        # The context's retcode fails an orchestration's salt.runner state; the returned
        # one is what salt-run exits with.
        __context__["retcode"] = 1
        record = release.record if release is not None and release.record["result"] != "running" else {}
        return {
            "pool": pool,
            "to": str(version),
            **record,
            "result": "failed",
            "reason": str(err),
            "retcode": 1,
        }


def _dead(holder: dict) -> bool:
    """The lock HOLDER is a controller's release on this master whose process is gone."""
    if not holder.get("controller") or holder.get("minion") != __opts__.get("id") or not holder.get("pid"):
        return False
    return __utils__["cabify_tasks.process_gone"](holder["pid"])


def recover(pool: str | None = None) -> dict:
    """
    Finish what a controller's release left when its process died (the master or the
    ``salt-run`` killed): for each pool (POOL, or every pool with a journal) whose
    journal names a release that no longer runs, take the lock and revert from the
    journal: the old replicas it drained come back, the new ones it started go, every
    LB agrees again; its history record says ``interrupted`` and how it ended. A
    release still running (its process alive, or its lock held elsewhere) is left
    alone. The master runs this on its schedule (``conf/master.yaml``).

    CLI Example:

    .. code-block:: bash

        salt-run cabify_controller.recover
        salt-run cabify_controller.recover cabify
    """
    try:
        client = consul_client()
    except CommandExecutionError as err:
        return {"skipped": str(err)}
    if pool is None:
        _, keys = client.kv.get(_kv("journal", ""), keys=True)
        pools = sorted(k.rsplit("/", 1)[-1] for k in keys or [])
    else:
        pools = [pool]
    done = {}
    for name in pools:
        _, entry = client.kv.get(_kv("journal", name))
        journal = _kv("decode", (entry or {}).get("Value"))
        if not isinstance(journal, dict) or not journal.get("release"):
            continue
        _, lock = client.kv.get(_kv("lock", name))
        holder = _kv("decode", (lock or {}).get("Value")) if lock and lock.get("Session") else None
        if holder is not None:
            if holder.get("id") != journal["release"] or not _dead(holder):
                continue
            log.warning(
                "cabify controller: release %s of %s died with its lock: releasing it", holder["id"], name
            )
            client.session.destroy(lock["Session"])
        done[name] = _outcome(
            name, journal.get("to", "?"), "recovery", {"journal": journal}, "revert_journal"
        )
    return done
