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
import urllib.parse
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
# How often the barrier reads the LBs again.
BARRIER_POLL = 0.1
# How often a canary's figures are read on every LB's stats page: how soon a canary
# that an LB took out for failing answers is out of every LB.
FAST_POLL = 0.1
# How often the operator's commands are read while a canary takes requests.
COMMAND_POLL = 0.5
# How often an abort looks again for canary slots an LB filled after its first drain.
CANARY_REDRAIN = 0.1
# How long a skipped trigger waits for the claim of the release that skipped it.
CLAIM_WAIT = 20


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
    shown = dict(_kv("controller_config", __opts__))
    shown["consul_token"] = "<set>" if shown.get("consul_token") else None  # never printed
    return shown


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
    """The release asked for has nothing to do: its trigger was handled already. With
    AWAITS_CLAIM, by the release that holds the lock for the same change, whose claim
    may not be written yet."""

    def __init__(self, reason: str, awaits_claim: bool = False):
        super().__init__(reason)
        self.awaits_claim = awaits_claim


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


class _Latencies:
    """The canary's response times on every LB since SINCE (HAProxy's request log,
    through Salt), fetched every INTERVAL s in a thread of their own: the fast reads
    of the counters never wait for them."""

    def __init__(self, release: Release, since: float, interval: float):
        self.release, self.since, self.interval = release, since, interval
        self.found: dict[str, list[float]] = {}
        self.fetched = 0.0
        self.thread: threading.Thread | None = None

    def _fetch(self) -> None:
        try:
            answers = _salt(self.release.lbs, "cabify_lb.request_latencies", [self.release.pool, self.since])
        except CommandExecutionError as err:
            log.warning("cabify controller: reading the LBs' request logs: %s", err)
            return
        merged: dict[str, list[float]] = {}
        for per_role in answers.values():
            for role, values in (per_role or {}).items():
                merged.setdefault(role, []).extend(values)
        self.found = merged

    def get(self) -> dict[str, list[float]]:
        now = time.monotonic()
        if now - self.fetched >= self.interval and (self.thread is None or not self.thread.is_alive()):
            self.fetched = now
            self.thread = threading.Thread(target=self._fetch, daemon=True)
            self.thread.start()
        return self.found


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
        # A step the controller watched over that was still under way when it failed.
        self.pending = __utils__["cabify_tasks.background"]()
        # A batch's old replicas drain while the next batch starts: one drain at a time.
        self.drains = __utils__["cabify_tasks.background"]()
        # Replicas this release drains (name -> address): the barrier leaves them out.
        self.leaving: dict[str, str] = {}
        self._told = threading.Lock()
        self.pages: dict[str, str | None] | None = None
        self.live: dict[str, Any] = {}
        self.before_canaries: dict[str, dict] = {}
        self.analysis: dict[str, Any] = {}
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
        with self._told:
            self._tell(step, data)

    def _tell(self, step: str, data: dict) -> None:
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
        holder["trigger"] = self.request.get("trigger")
        if not self.consul.kv.put(key, _kv("encode", holder), acquire=session):
            self.consul.session.destroy(session)
            _, entry = self.consul.kv.get(key)
            other = _kv("decode", (entry or {}).get("Value")) or {}
            if self.request.get("trigger") and other.get("to") == self.version:
                raise Skipped(
                    f"release {other.get('id')} to version {self.version} is running: this change is its",
                    awaits_claim=other.get("trigger") == self.request["trigger"],
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

    def note_skip(self, reason: str, awaits_claim: bool = False) -> None:
        """Count a trigger that was skipped in the claim (``skipped``, the newest 20):
        how many times a change was asked for, beside the one release it made. With
        AWAITS_CLAIM (the release of the same change holds the lock) it first waits,
        CLAIM_WAIT at most, for that release's claim, which would otherwise start the
        count again without this skip."""
        claims = _kv("trigger", self.pool)
        change = self.consul.kv.get(self.request["trigger"])[1] if awaits_claim else None
        deadline, attempts = time.monotonic() + CLAIM_WAIT, 0
        while attempts < 10:
            _, entry = self.consul.kv.get(claims)
            seen = _kv("decode", (entry or {}).get("Value")) or {}
            if (
                change
                and int(seen.get("index", -1)) < int(change["ModifyIndex"])
                and time.monotonic() < deadline
            ):
                time.sleep(BARRIER_POLL)
                continue
            attempts += 1
            skipped = [*seen.get("skipped", []), {"id": self.id, "at": _now(), "reason": reason}][-20:]
            if self.consul.kv.put(
                claims, _kv("encode", {**seen, "skipped": skipped}), cas=(entry or {}).get("ModifyIndex", 0)
            ):
                return
        log.warning("cabify controller: could not count the skip of %s", self.id)

    def released(self) -> None:
        """What this release set becomes the pool's version in pillar (ext_pillar
        cabify_released), with the env and canary settings it was given (or those of
        the release before): a plain highstate keeps it."""
        _, entry = self.consul.kv.get(_kv("released", self.pool))
        before = _kv("decode", (entry or {}).get("Value")) or {}
        value = {"version": self.version, "release": self.id, "at": _now()}
        for key in ("env", "canary"):
            asked = self.request.get(key)
            if asked or (key == "env" and asked is not None):  # an empty env is one; no canary is none
                value[key] = asked
            elif isinstance(before.get(key), dict):
                value[key] = before[key]
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
                "role": "canary" if "canary" in (n["Service"].get("Tags") or []) else "stable",
            }
            for n in nodes
        }

    def barrier(self, timeout: float, must_pass: list[str] = (), watch=None) -> float:
        """Wait until every LB's servers agree with Consul (and MUST_PASS pass there);
        the seconds it took. Raises naming the LBs that are late after TIMEOUT, or what
        WATCH (called at each round) raises."""
        started = time.monotonic()
        said = None
        while True:
            if watch is not None:
                watch()
            passing = self.instances()
            late = {"consul": [f"{n} not passing" for n in must_pass if n not in passing]}
            if not late["consul"]:
                # HAProxy's weight is the SRV weight (Consul's Weights.Passing) / 256, rounded up.
                expected = {
                    i["address"]: None
                    if i["weight"] is None
                    else __utils__["cabify_weights.haproxy_weight"](i["weight"])
                    for n, i in passing.items()
                    if n not in self.leaving
                }
                # (A leaving replica's address that a new one got since is not left out.)
                answers = self.lb_agreement(expected, ignore=set(self.leaving.values()) - set(expected))
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

    def start(self, host: str, part: dict, count: int, role: str = "stable") -> list[str]:
        names = []
        settings = part["settings"]
        for _ in range(count):
            started = _salt(
                [host],
                "cabify_pool.start",
                [
                    self.pool,
                    self.version,
                    role,
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

    def wait_healthy(
        self, new: dict[str, list[str]], settings: dict, crash_on_restart: bool = True, watch=None
    ) -> None:
        """NEW (names by host) pass their checks (each host watches its own for a
        crash), then every LB has them UP, for MIN_HEALTHY_TIME (WATCH: see barrier)."""
        deadline = float(settings["healthy_deadline"])
        calls = [
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
        if watch is None:
            _each(calls)
        else:
            # The LBs may send the new replicas requests before their hosts say they
            # pass: WATCH runs meanwhile too.
            self.watching(watch, _each, calls)
        names = [n for found in new.values() for n in found]
        waited = self.barrier(deadline, names, watch)
        self.progress("barrier", replicas=names, seconds=waited)
        hold = float(settings["min_healthy_time"])
        if hold > 0:
            held_since = time.monotonic()
            while time.monotonic() - held_since < hold:
                self.barrier(deadline, names, watch)
                time.sleep(BARRIER_POLL)

    def watching(self, watch, func, *args) -> Any:
        """FUNC(*ARGS) in a thread while WATCH is called every FAST_POLL s: what FUNC
        returns, or what either raises first (FUNC then goes on in ``self.pending``)."""
        result: list = []
        self.pending.start("waiting", lambda: result.append(func(*args)))
        while not result and any(t.is_alive() for t in self.pending.threads):
            watch()
            time.sleep(FAST_POLL)
        self.pending.wait()
        return result[0] if result else None

    def drain(self, old: dict[str, list[str]], drain_timeout: float, stop_now: bool = False) -> dict:
        """OLD (names by host) out of service with no failed request: drained on every
        LB, waited for until every LB shows 0 sessions on them (DRAIN_TIMEOUT at most),
        deregistered on their hosts, then stopped (in the background unless STOP_NOW).
        They leave Consul (and so the LBs' DNS) only once idle: a server that leaves
        DNS shows no sessions any more, whatever it still holds."""
        began = time.monotonic()
        names = [n for found in old.values() for n in found]
        known = self.instances(passing_only=False)
        addresses = [known[n]["address"] for n in names if n in known]
        self.leaving.update({n: known[n]["address"] for n in names if n in known})
        # Drained and waited for in one call on each LB: the wait starts as the drain is set.
        idle = (
            _salt(
                self.lbs,
                "cabify_lb.drain_until_idle",
                [self.pool, addresses, drain_timeout],
                timeout=drain_timeout + QUICK,
            )
            if addresses
            else {}
        )
        _each(
            [
                (_salt, [host], "cabify_pool.deregister", [self.pool, found], {"fence": self.fence})
                for host, found in sorted(old.items())
                if found
            ]
        )
        self.record.setdefault("drains", []).append(
            {"replicas": names, "lbs": idle, "seconds": round(time.monotonic() - began, 2)}
        )
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
            # The last batch's old replicas finish draining and stopping first: a paused
            # pool holds still.
            self.drains.wait()
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

    # --- canary -----------------------------------------------------------------------------

    def canary(self) -> dict:
        """A canary across the fleet: CANARY's replicas (round the app hosts) get each
        step's share of the requests, weighted against every stable replica of the
        catalog, while the figures of every LB, summed, are judged; then the new
        version rolls out to the whole pool (its share only rises) and the canaries go.
        A broken threshold, a canary that any LB took out, an error or the operator's
        abort takes the canaries out of every LB at once and ends the release."""
        parts = self.parts(role="stable")
        first = parts[self.apps[0]]
        specs = {host: part["spec"] for host, part in parts.items()}
        if len(set(specs.values())) > 1:
            raise CommandExecutionError(
                f"the app hosts' pillar gives version {self.version} different replicas: {specs}"
            )
        spec = specs[self.apps[0]]
        wanted = {**(first["settings"].get("canary") or {}), **(self.request.get("canary") or {})}
        settings = _salt([self.apps[0]], "cabify_release.check_canary", [wanted])[self.apps[0]]
        release = {**first["settings"]["release"], "drain_timeout": float(first["settings"]["drain_timeout"])}
        self.prepare()
        stable = [i for i in self.instances().values() if i["role"] == "stable"]
        if not stable:
            raise CommandExecutionError(
                f"a canary of pool {self.pool} needs stable replicas passing in Consul"
            )
        count = int(settings["replicas"])
        hosts = [self.apps[i % len(self.apps)] for i in range(count)]
        counts = {"new": count, "old": len(stable)}
        self.record["canary"] = {"replicas": count, "stable": len(stable), "steps": []}
        self.save(
            phase="canary",
            strategy="canary",
            step=0,
            of=len(settings["steps"]),
            weight=0,
            started={},
            drained={},
            settings=release,
            record=self.record,
            before={host: part["keep"] + part["old"] for host, part in parts.items()},
        )
        self.progress(
            "canary-start", replicas=count, stable=len(stable), hosts=hosts, steps=settings["steps"]
        )
        self.live = {"release": self.id, "version": self.version, "steps": settings["steps"], "figures": {}}
        self.canary_state(phase="starting", step=0, weight=0, canaries={})
        try:
            self.canary_steps(
                settings, spec, counts, {h: (parts[h], hosts.count(h)) for h in set(hosts)}, release
            )
        except Exception as err:  # noqa: BLE001 - a threshold, an LB, the operator, a host: the canaries go
            self.abort_canary(err, release)
        canaries = {host: list(names) for host, names in self.journal["started"].items()}
        self.save(phase="promoting")
        self.canary_state(phase="promoting")
        self.progress("promoting", canaries=canaries)
        # The weights stay: every new stable replica joins at the canary's weight (same
        # spec) and every old one takes its own along, so the new version's share only
        # rises; a failure reverts the canaries too.
        rolled = self._roll(self.parts(role="stable"), canaries)
        self.drain(canaries, release["drain_timeout"])
        self.wait_stops()
        self.clear_weights()
        self.barrier(float(release["healthy_deadline"]))
        self.canary_state(phase="promoted")
        self.progress("promoted", canaries=canaries)
        names = {n for found in canaries.values() for n in found}
        return {
            "started": {h: [n for n in found if n not in names] for h, found in rolled["started"].items()},
            "removed": rolled["removed"] + sorted(names),
            "canaries": canaries,
        }

    def canary_steps(
        self, settings: dict, spec: str, counts: dict, placement: dict[str, tuple], release: dict
    ) -> None:
        """Start the canaries (PLACEMENT: host -> (its part, how many)) at the first
        step's share, then hold each step's share under analysis; then, without
        ``auto_promote``, wait for the operator's promote."""
        deadline = float(release["healthy_deadline"])
        self.analysis = settings["analysis"]
        # The stable replicas take their weight first, and each canary is registered
        # with its own: it never gets more than the first step's share.
        weights = self.set_share(settings["steps"][0]["weight"], spec, counts)
        self.barrier(deadline)
        self.before_canaries = self.counters(self.lb_rows())
        # A canary that fails its first answers is out of every LB at once, from the
        # moment it starts: the LBs send it requests as soon as its host registers it.
        watch = lambda: self.check_canaries("starting", self.lb_rows())  # noqa: E731
        started = self.watching(
            watch,
            lambda: {
                host: self.start(host, part, count, "canary") for host, (part, count) in placement.items()
            },
        )
        self.canary_state(canaries=started)
        self.wait_healthy(started, release, watch=watch)
        for number, step in enumerate(settings["steps"], start=1):
            weights = self.set_share(step["weight"], spec, counts)
            self.barrier(deadline)
            self.save(step=number, weight=step["weight"], share_given=weights["share"])
            self.canary_state(
                phase="analysing", step=number, weight=step["weight"], share_given=weights["share"]
            )
            self.progress("step", number=number, weight=step["weight"], given=weights["share"])
            if self.analyse(f"step {number} (weight {step['weight']}%)", step["pause"], settings, weights):
                return
        if not settings["auto_promote"]:
            self.save(phase="waiting for promote")
            self.canary_state(phase="waiting for promote")
            self.progress("waiting", promote_timeout=settings["promote_timeout"])
            if not self.analyse("waiting", settings["promote_timeout"], settings, weights, until="promote"):
                raise CommandExecutionError(
                    f"not promoted within promote_timeout {settings['promote_timeout']}s"
                )

    def canary_state(self, **changes: Any) -> None:
        """The canary's live state (``cabify/canary/<pool>/state``, what ``cabify.status``
        shows as ``canary``): phase, step, weight, the figures, the canaries."""
        self.live.update(changes)
        self._quietly("publishing the canary's state", self.put, _kv("canary_state", self.pool), self.live)

    def stats_pages(self) -> dict[str, str | None]:
        """Where the controller reads each LB's figures (``cabify_lb.stats_url``); an LB
        whose stats page this master cannot reach is read through Salt (slower)."""
        pages: dict[str, str | None] = {}
        for lb, url in _salt(self.lbs, "cabify_lb.stats_url").items():
            try:
                with urllib.request.urlopen(url, timeout=1):  # noqa: S310 - http, from the LB's pillar
                    pages[lb] = url
            except (OSError, ValueError) as err:
                log.warning("cabify controller: %s's stats page %s: %s: read through Salt", lb, url, err)
                pages[lb] = None
        return pages

    def lb_rows(self) -> dict[str, list[dict]]:
        """Each LB's server rows of the pool, from its stats page (or through Salt)."""
        return dict(zip(self.lbs, _each([(self.lb_rows_of, lb) for lb in self.lbs]), strict=True))

    def lb_rows_of(self, lb: str) -> list[dict]:
        """LB's server rows of the pool, from its stats page (or through Salt)."""
        if self.pages is None:
            self.pages = self.stats_pages()
        text = None
        if self.pages.get(lb):
            try:
                with urllib.request.urlopen(self.pages[lb], timeout=1) as resp:  # noqa: S310
                    text = resp.read().decode()
            except (OSError, ValueError) as err:
                log.warning("cabify controller: %s's stats page: %s", lb, err)
        if text is None:
            text = _salt([lb], "cabify_lb.command", ["show stat"])[lb]
        return __utils__["cabify_analysis.stat_rows"](text, self.pool)

    def lb_agreement(self, expected: dict[str, int | None], ignore: set[str] = frozenset()) -> dict:
        """How each LB's servers differ from EXPECTED (see cabify_lb.agreement), read on
        its stats page, leaving out the addresses IGNORE (replicas being drained); an
        LB with a slot that a drain left behind holding an expected server is asked
        through Salt, which puts that slot back to ready."""
        answers: dict[str, list[str]] = {}
        fix = []
        for lb, rows in self.lb_rows().items():
            found = {a: s for a, s in __utils__["cabify_analysis.servers"](rows).items() if a not in ignore}
            answers[lb], drained = __utils__["cabify_analysis.disagreement"](found, expected)
            if drained:
                fix.append(lb)
        for lb, problems in _salt(fix, "cabify_lb.agreement", [self.pool, expected]).items():
            answers[lb] = [p for p in problems if p.split(" ", 1)[0] not in ignore]
        return answers

    def set_share(self, share: float, spec: str, counts: dict) -> dict:
        """The replicas of SPEC get SHARE percent of the requests beside the others
        (COUNTS: ``{"new", "old"}`` replicas), weights computed here and applied by
        every app host to its own replicas' registrations."""
        try:
            weights = __utils__["cabify_weights.stored"](share, counts["new"], counts["old"], spec)
        except ValueError as err:
            raise CommandExecutionError(f"canary:steps: weight {err}") from None
        weights["release"] = self.id
        self.put(_kv("weights", self.pool), weights)
        _salt(self.apps, "cabify_pool.apply_weights", [self.pool])
        return weights

    def clear_weights(self) -> None:
        """Every replica back to one weight (nothing when no weights are stored)."""
        _, entry = self.consul.kv.get(_kv("weights", self.pool))
        if entry is not None:
            self.consul.kv.delete(_kv("weights", self.pool))
            _salt(self.apps, "cabify_pool.apply_weights", [self.pool])

    def analyse(
        self, label: str, seconds: float, settings: dict, weights: dict, until: str = ""
    ) -> str | None:
        """Hold the canary's share for SECONDS (longer while inconclusive, up to
        ``inconclusive_limit``; or until the operator's promote with UNTIL) while every
        LB's figures are read every FAST_POLL s: a canary that an LB holds DOWN, or a
        threshold broken by the figures summed over every LB, raises at once. Returns
        ``promote`` when the operator asked for it."""
        analysis = settings["analysis"]
        baseline = self.counters(self.lb_rows())
        since, started = time.time(), time.monotonic()
        end = started + float(seconds)
        limit = end + float(analysis["inconclusive_limit"])
        latencies = _Latencies(self, since, float(analysis["interval"]))
        said = asked_at = 0.0
        while True:
            now = time.monotonic()
            if now - asked_at >= COMMAND_POLL:
                asked_at = now
                asked = self.command()
                if asked == "abort":
                    raise CommandExecutionError("aborted by the operator (cabify.abort)")
                if asked == "promote":
                    return asked
                if asked == "pause":
                    paused = self.hold_paused(label)
                    end, limit = end + paused, limit + paused
                    continue
            rows = self.lb_rows()
            self.check_canaries(label, rows, up_before=True)
            numbers = self.figures(rows, baseline, latencies.get(), weights["share"])
            broken = __utils__["cabify_analysis.judge"](numbers, analysis)
            if broken:
                raise CommandExecutionError(f"{label}: {broken}")
            if now - said >= float(analysis["interval"]):
                said = now
                self.canary_state(figures={k: numbers[k] for k in ("stable", "canary", "share", "lbs")})
                self.progress("analysis", label=label, figures=numbers)
            if now >= end and not until:
                if __utils__["cabify_analysis.conclusive"](numbers, analysis):
                    self.record["canary"]["steps"].append(
                        {"label": label, "started_at": since, "ended_at": time.time(), "figures": numbers}
                    )
                    return None
                if now > limit:
                    raise CommandExecutionError(
                        f"{label} inconclusive: the canary had {numbers['canary']['requests']} request(s) in "
                        f"{now - started:.0f}s, fewer than min_requests {analysis['min_requests']}"
                    )
            if until and now >= end:
                return None
            time.sleep(FAST_POLL)

    def counters(self, rows: dict[str, list[dict]]) -> dict[str, dict]:
        """Each LB's counters by role (see cabify_analysis.role_counters)."""
        return {lb: __utils__["cabify_analysis.role_counters"](found) for lb, found in rows.items()}

    def check_canaries(self, label: str, rows: dict[str, list[dict]], up_before: bool = False) -> None:
        """Raise when the canaries failed more answers since they started (ROWS: each
        LB's stats, summed) than ``max_error_rate`` x ``min_requests``: no window of
        ``min_requests`` can pass any more, so the canary fails at once rather than at
        the next reading. Also when an LB holds a canary DOWN (its checks failed) that
        failed answers, or that was UP on every LB before (UP_BEFORE)."""
        now = self.counters(rows)
        failed = sum(
            now[lb].get("canary", {}).get("errors", 0)
            - self.before_canaries.get(lb, {}).get("canary", {}).get("errors", 0)
            for lb in now
        )
        budget = float(self.analysis["max_error_rate"]) * float(self.analysis["min_requests"])
        out = {lb: found for lb, r in rows.items() if (found := __utils__["cabify_analysis.canaries_out"](r))}
        if failed > budget:
            why = (
                f"the canary failed {failed} answer(s) on the LBs since it started, more than "
                f"max_error_rate x min_requests ({budget:g}): no window of min_requests can pass"
            )
        elif out and (failed > 0 or up_before):
            why = (
                "an LB holds the canary DOWN: "
                + ", ".join(f"{lb} ({', '.join(found)})" for lb, found in sorted(out.items()))
                + f" ({failed} failed answer(s) since it started)"
            )
        else:
            return
        self.record["canary"]["failed"] = {"lbs": out, "at": _now(), "failed_answers": failed}
        raise CommandExecutionError(f"{label}: {why}")

    def figures(self, rows: dict[str, list[dict]], baseline: dict, latencies: dict, share: float) -> dict:
        """The canary's figures summed over every LB (requests, errors, error rate,
        p50/p99, the measured share), and each LB's own (``lbs``)."""
        counters = self.counters(rows)
        summed: dict[str, dict] = {}
        summed_base: dict[str, dict] = {}
        for source, target in ((counters, summed), (baseline, summed_base)):
            for per_role in source.values():
                for role, found in per_role.items():
                    into = target.setdefault(role, {"requests": 0, "errors": 0})
                    into["requests"] += found["requests"]
                    into["errors"] += found["errors"]
        numbers = __utils__["cabify_analysis.figures"](summed, summed_base, latencies, share)
        numbers["lbs"] = {}
        for lb, found in counters.items():
            own = __utils__["cabify_analysis.figures"](found, baseline.get(lb), {}, share)
            numbers["lbs"][lb] = {
                "requests": {role: own[role]["requests"] for role in ("stable", "canary")},
                "errors": {role: own[role]["errors"] for role in ("stable", "canary")},
                "share": own["share"]["measured"],
            }
        return numbers

    def hold_paused(self, label: str) -> float:
        """The operator paused the canary: it keeps its share (and is still watched on
        every LB) until resumed; the seconds it was paused."""
        began = time.monotonic()
        phase = self.journal.get("phase")
        live_phase = self.live.get("phase")
        self.save(phase="paused", paused_at=_now())
        self.canary_state(phase="paused")
        self.progress("paused", at=label)
        while (asked := self.command()) == "pause":
            if not self.held():
                raise CommandExecutionError(f"release {self.id} lost its lock while paused")
            self.check_canaries(f"{label} (paused)", self.lb_rows(), up_before=True)
            time.sleep(COMMAND_POLL)
        if asked == "abort":
            raise CommandExecutionError("aborted by the operator (cabify.abort)")
        self.save(phase=phase, paused_at=None)
        self.canary_state(phase=live_phase)
        self.progress("resumed", at=label)
        return time.monotonic() - began

    def abort_canary(self, cause: Exception, release: dict) -> None:
        """Every canary out of every LB first (drained on each LB's stats page, a few
        milliseconds; through Salt where that fails), then out of Consul, waited for,
        stopped; the weights cleared and every LB agreeing again. Raises CAUSE as the
        release's failure (saying what of the abort failed, if anything)."""
        seen = time.monotonic()
        self.record["abort"] = {"reason": str(cause), **self.canaries_off_every_lb(seen)}
        done = threading.Event()
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="canaries-off") as keeper:
            late = keeper.submit(contextvars.copy_context().run, self.keep_canaries_off, done)
            try:
                self._remove_canaries(cause, release, late, done)
            finally:
                done.set()

    def _remove_canaries(self, cause: Exception, release: dict, late, done: threading.Event) -> None:
        """The abort's second part: the canaries out of Consul, stopped, and every LB
        agreeing again (see abort_canary); LATE (the future of keep_canaries_off, which
        DONE stops) says how many canary slots LBs filled after the first drain."""
        # A canary whose start was under way is in the journal once that start ends.
        self._quietly("finishing the canaries' start", self.pending.wait)
        canaries = {host: list(names) for host, names in self.journal["started"].items() if names}
        if not self.held():
            raise cause
        reason = f"canary of version {self.version} aborted: {cause}"
        self.save(phase="aborting")
        self.canary_state(phase="aborting", reason=str(cause))
        self.progress("aborting", reason=str(cause), abort=dict(self.record.get("abort") or {}))
        problems = []
        try:
            if canaries:
                self.drain(canaries, release["drain_timeout"])
            self.wait_stops()
        except Exception as err:  # noqa: BLE001 - said in the failure; recovery finishes it
            problems.append(f"removing the canaries: {err}")
        done.set()
        drained_late = late.result(timeout=QUICK)
        if drained_late:
            self.record["abort"] = {**self.record["abort"], "drained_late": drained_late}
        for what, func in (("clearing the weights", self.clear_weights), ("reconciling", self.reconcile)):
            try:
                func()
            except Exception as err:  # noqa: BLE001 - said in the failure
                problems.append(f"{what}: {err}")
        self.save(phase="aborted" if not problems else "abort incomplete")
        self.canary_state(phase="aborted" if not problems else "abort incomplete", weight=0)
        self.progress(
            "aborted", reason=str(cause), problems=problems, abort=dict(self.record.get("abort") or {})
        )
        if problems:
            raise CommandExecutionError(
                f"{reason}; the abort is incomplete: {'; '.join(problems)}"
            ) from cause
        raise CommandExecutionError(reason) from cause

    def canaries_off_every_lb(self, seen: float) -> dict:
        """Drain every canary slot of the pool on every LB now: on its stats page (the
        admin form, which the LB allows from the master alone: ``haproxy:stats:admin_from``),
        or through Salt where that fails. How long after SEEN every LB had them out, and
        how on each (``none yet`` where an LB had no canary slot: ``keep_canaries_off``
        drains it once it has one; an LB that could not be asked says why, and the
        abort's own drain tries it again)."""

        def off(lb: str) -> str:
            try:
                return self.canaries_off(lb)
            except Exception as err:  # noqa: BLE001 - said in the record; the abort goes on
                log.warning("cabify controller: draining the canaries on %s: %s", lb, err)
                return f"failed: {err}"

        ways = dict(zip(self.lbs, _each([(off, lb) for lb in self.lbs]), strict=True))
        return {"out_of_every_lb_after": round(time.monotonic() - seen, 3), "how": ways}

    def serving_canaries(self, rows: list[dict]) -> list[dict]:
        """The canary rows of an LB that take requests: up (``UP``, ``UP 1/2``, or
        ``no check``), with an address and a weight. A drained slot shows ``DRAIN``, one
        down or in maintenance takes none."""
        return [
            r
            for r in rows
            if __utils__["cabify_analysis.role_of"](r) == "canary"
            and r.get("addr")
            and str(r.get("status", "")).startswith(("UP", "no check"))
            and str(r.get("weight", "")) != "0"
        ]

    def canaries_off(self, lb: str, salt_too: bool = True) -> str:
        """LB's canary slots that take requests drained, on its stats page (or through
        Salt, unless not SALT_TOO): how (``none yet`` where it had none)."""
        rows = self.serving_canaries(self.lb_rows_of(lb))
        if not rows:
            return "none yet"
        page = (self.pages or {}).get(lb)
        if page:
            form = urllib.parse.urlencode(
                [("b", self.pool), ("action", "drain"), *(("s", r["svname"]) for r in rows)]
            )
            request = urllib.request.Request(  # noqa: S310 - the http URL of the LB's pillar
                page.split(";", 1)[0], data=form.encode(), method="POST"
            )
            try:
                with urllib.request.urlopen(request, timeout=1) as resp:  # noqa: S310 - the LB's own page
                    if "st=DONE" in resp.url:
                        return "stats page"
                    log.warning(
                        "cabify controller: %s's stats page did not drain the canaries: %s", lb, resp.url
                    )
            except (OSError, ValueError) as err:
                log.warning("cabify controller: draining the canaries on %s's stats page: %s", lb, err)
        if not salt_too:
            return "not drained"
        _salt([lb], "cabify_lb.drain_servers", [self.pool, [r["addr"] for r in rows]])
        return "salt"

    def keep_canaries_off(self, done: threading.Event) -> dict[str, int]:
        """Until DONE (the canaries are out of Consul and stopped): a canary slot that an
        LB fills meanwhile (its DNS answer came after the first drain) is drained too,
        within CANARY_REDRAIN, on each LB's stats page at once. An LB without one is
        left to the abort's own drain, through Salt. How many late drains on each LB."""
        late: dict[str, int] = {}
        lbs = [lb for lb in self.lbs if (self.pages or {}).get(lb)]

        def again(lb: str) -> None:
            try:
                how = self.canaries_off(lb, salt_too=False)
            except Exception as err:  # noqa: BLE001 - the next round tries again
                log.warning("cabify controller: keeping the canaries off %s: %s", lb, err)
                return
            if how == "stats page":
                late[lb] = late.get(lb, 0) + 1
                log.info("cabify controller: %s had a canary taking requests again: drained", lb)
            elif how != "none yet":
                log.warning("cabify controller: %s has a canary taking requests: %s", lb, how)

        while lbs and not done.wait(CANARY_REDRAIN):
            _each([(again, lb) for lb in lbs])
        return late

    def reconcile(self) -> None:
        _salt(self.apps, "cabify_pool.reconcile", [self.pool])

    # --- rolling ----------------------------------------------------------------------------

    def parts(self, role: str | None = None) -> dict[str, dict]:
        """Each app host's part of the release (``cabify_pool.release_plan``; with ROLE,
        only that role's replicas count), the webhooks of its settings started."""
        parts = _salt(
            self.apps,
            "cabify_pool.release_plan",
            [self.pool, self.version],
            {"release": self.request.get("release_settings"), "env": self.request.get("env"), "role": role},
        )
        self.start_notices(parts[self.apps[0]]["settings"]["release"].get("webhooks"))
        if not self.record["from"]:
            self.record["from"] = sorted({v for part in parts.values() for v in part["versions"]})
        return parts

    def timed(self, phase: str, func, *args, **kwargs) -> Any:
        """FUNC's result; the seconds it took add up in the record's ``phases``."""
        began = time.monotonic()
        try:
            return func(*args, **kwargs)
        finally:
            phases = self.record.setdefault("phases", {})
            phases[phase] = round(phases.get(phase, 0) + time.monotonic() - began, 2)

    def roll(self) -> dict:
        # The image goes to every app host while each says its part: neither needs the other.
        parts, _ = _each([(self.timed, "plan", self.parts), (self.timed, "prepare", self.prepare)])
        return self._roll(parts)

    def _roll(self, parts: dict[str, dict], canaries: dict[str, list[str]] | None = None) -> dict:
        """The batches of PARTS, each new replica UP on every LB before an old one is
        drained on every LB; a failure reverts (the CANARIES of a promotion too)."""
        settings = parts[self.apps[0]]["settings"]["release"]
        drain_timeout = float(parts[self.apps[0]]["settings"]["drain_timeout"])
        batches = __utils__["cabify_plan.fleet_batches"](
            parts, settings["max_parallel"], bool(settings.get("host_by_host"))
        )
        started: dict[str, list[str]] = {host: list(names) for host, names in (canaries or {}).items()}
        self.save(
            phase="rolling",
            batches=batches,
            batch=0,
            started=started,
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
        drained: dict[str, dict] = {}
        rolling_since = time.monotonic()
        for number, batch in enumerate(batches, start=1):
            self.save(batch=number, of=len(batches))
            try:
                self.gate(number)
                self.progress("batch", number=number, of=len(batches), units=batch)
                began = time.monotonic()
                hosts = sorted({u["host"] for u in batch})
                counts = [sum(u["start"] for u in batch if u["host"] == host) for host in hosts]
                new = dict(
                    zip(
                        hosts,
                        _each([(self.start, h, parts[h], n) for h, n in zip(hosts, counts, strict=True)]),
                        strict=True,
                    )
                )
                for host, names in new.items():
                    started.setdefault(host, []).extend(names)
                if any(new.values()):
                    self.wait_healthy(new, settings)
                    up = round(time.monotonic() - began, 2)
                    self.record.setdefault("batches", []).append(
                        {"number": number, "started": new, "start_to_up": up}
                    )
                    self.progress("batch-healthy", number=number, started=new, start_to_up=up)
                # The batch before finishes draining (its replicas out of every LB and
                # of Consul) before this one's old replicas go: one drain at a time,
                # while the next batch starts.
                self.drains.wait()
                old: dict[str, list[str]] = {}
                for unit in batch:
                    for name in unit["drain"]:
                        old.setdefault(unit["host"], []).append(name)
                        drained[name] = {"host": unit["host"], "spec": parts[unit["host"]]["specs"][name]}
                self.save(drained=drained, started=started)
                if old:
                    self.drains.start(f"draining batch {number}", self.drain, old, drain_timeout)
                self.progress("batch-done", number=number, started=new, draining=old)
            except Exception as err:  # noqa: BLE001 - whatever failed, the old version must keep serving
                self.failed(number, err, started, drained, {**settings, "drain_timeout": drain_timeout})
        self.record.setdefault("phases", {})["batches"] = round(time.monotonic() - rolling_since, 2)
        try:
            self.timed("last drain", self.drains.wait)
            self.wait_stops()
        except Exception as err:  # noqa: BLE001 - the last drain failed: revert like any batch
            self.failed(len(batches), err, started, drained, {**settings, "drain_timeout": drain_timeout})
        self.timed("finish", _salt, self.apps, "cabify_pool.reconcile", [self.pool])
        self.timed("finish", self.barrier, float(settings["healthy_deadline"]))
        return {"started": started, "removed": list(drained)}

    def failed(self, number: int, err: Exception, started: dict, drained: dict, settings: dict) -> None:
        """Batch NUMBER failed with ERR: the drains under way end, then (``auto_revert``)
        the release is reverted; raises saying so."""
        self._quietly("finishing the drains", self.drains.wait)
        self._quietly("stopping drained replicas", self.wait_stops)
        if not self.held():
            raise err
        self.progress("failed", batch=number, reason=str(err))
        stopped = f"release to version {self.version} stopped at batch {number}: {err}"
        if settings.get("auto_revert", True):
            undone = self.revert(started, drained, settings)
            raise CommandExecutionError(f"{stopped}; reverted: {undone}") from err
        raise CommandExecutionError(f"{stopped}; not reverted (auto_revert is off)") from err

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
                self.leaving.pop(name, None)
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
        try:
            self.clear_weights()
        except Exception as err:  # noqa: BLE001 - reported
            problems.append(f"clearing a canary's weights: {err}")
        try:
            # Ended once every LB serves what Consul says passes, as a release ends.
            self.barrier(float(settings.get("healthy_deadline", 30)))
        except Exception as err:  # noqa: BLE001 - reported
            problems.append(f"the LBs after the revert: {err}")
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


def canary(
    pool: str,
    version: str,
    settings: dict | None = None,
    env: dict | None = None,
    canary: dict | None = None,
    trigger: str | None = None,
) -> dict:
    """
    A canary release of POOL to VERSION across the fleet, under the pool's lock, with
    its journal, recorded in history. CANARY overrides the pool's canary settings
    (``replicas``, ``steps`` of ``weight`` and ``pause``, ``analysis``,
    ``auto_promote``, ``promote_timeout``), SETTINGS its release settings (the
    promotion is a rolling release), ENV the replicas' environment. The canaries' share
    is weighted against every stable replica in the catalog; each step's figures are
    those of every LB, summed. A canary that any LB takes out for failing answers is
    out of every LB within a Salt call (about half a second), and the release ends.

    CLI Example:

    .. code-block:: bash

        salt-run cabify_controller.canary cabify 2 canary='{steps: [{weight: 20, pause: 30}]}'
    """
    request = {"release_settings": settings or {}, "env": env, "canary": canary or {}, "trigger": trigger}
    return _outcome(pool, version, "canary", request, "canary")


def _outcome(pool: str, version: str, strategy: str, request: dict, body: str) -> dict:
    """A release run: its record. One that failed (or could not start) sets the
    runner's return code, so that ``salt-run`` and an orchestration fail with it."""
    release = None
    try:
        release = Release(pool, version, strategy, request)
        return release.run(getattr(release, body))
    except Skipped as why:
        log.info("cabify controller: pool %s to %s: skipped: %s", pool, version, why)
        release._quietly("counting the skip", release.note_skip, str(why), why.awaits_claim)
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
