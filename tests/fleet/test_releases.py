"""Fleet releases decided by the release controller on the master, under load through
both LBs: a rolling release over every app host that drains to zero sessions on every
LB (a slow request in flight completes), a release that fails on the second host,
reverted on every host, an event-triggered release paused and resumed that a highstate
keeps, one release per KV change, a controller killed mid-way, a master restarted
mid-way; a canary whose share holds through each LB, and a canary answering 500
out of every LB within 2 s."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter

import pytest

from tests.fleet.conftest import (
    APP_HOSTS,
    FIGURES,
    HOSTS,
    LB_HOSTS,
    POOL_TOTAL,
    STACK,
    address,
    fleet_consul,
    fleet_history,
    fleet_kv,
    haproxy_stats,
    host_run,
    pool_serves_everywhere,
    state_results,
)
from tests.fleet.test_fleet import load_through, served_more
from tests.helpers import OPERATOR, wait_for
from tests.load import LoadClient

PER_HOST = STACK["cabify"]["pools"]["cabify"]["replicas"]
STABLE = str(STACK["cabify"]["pools"]["cabify"]["version"])
NEW = "2"
FAST = {"min_healthy_time": 0, "healthy_deadline": 30}
# A request of SLOW seconds is in flight on some replica whenever one is drained: the
# pool's drain_timeout (5 s) lets it finish. (The LBs give a server 3 s to answer,
# timeout_server: a slower request would be a 504 whatever the drain.)
SLOW = 2.5


@pytest.fixture(scope="module")
def new_version(fleet, salt_run_cli) -> str:
    """Version NEW pushed to the fleet's registry by the build host (orch.build)."""
    ret = salt_run_cli.run("state.orchestrate", "orch.build", pillar={"build": {"version": NEW}})
    assert ret.returncode == 0, f"orch.build of version {NEW}: {str(ret.data)[-2000:]}"
    return NEW


def release(salt_run_cli, version: str, **settings):
    """orch.rolling of pool cabify to VERSION: the release controller's record."""
    pillar = {"release": {"pool": "cabify", "version": version, "settings": FAST | settings}}
    ret = salt_run_cli.run("state.orchestrate", "orch.rolling", pillar=pillar)
    steps = list((ret.data or {}).get("data", {}).values()) if isinstance(ret.data, dict) else []
    step = next(iter(steps[0].values())) if steps else {}
    return ret, (step.get("changes") or {}).get("return") or {}


@pytest.fixture
def versions(fleet, fleet_cli, salt_run_cli, new_version) -> tuple[str, str]:
    """The version every app host runs (STABLE after a former test left a mix) and the
    other one: each test releases from where the last one left the pool."""
    if not serves_only(fleet_cli, STABLE) and not serves_only(fleet_cli, new_version):
        ret, record = release(salt_run_cli, STABLE, max_parallel=3)
        assert ret.returncode == 0, f"back to version {STABLE}: {record.get('reason')}"
    running = STABLE if serves_only(fleet_cli, STABLE) else new_version
    return running, new_version if running == STABLE else STABLE


def versions_by_host(fleet_cli) -> dict[str, dict[str, int]]:
    found = fleet_cli.run(APP_HOSTS, "cabify_pool.running", "cabify")
    return {host: dict(Counter(r["version"] for r in replicas)) for host, replicas in found.items()}


def serves_only(fleet_cli, version: str) -> bool:
    return versions_by_host(fleet_cli) == {host: {version: PER_HOST} for host in APP_HOSTS}


def test_a_rolling_release_over_every_app_host_drains_to_zero_sessions_on_every_lb(
    fleet, fleet_cli, salt_run_cli, versions
):
    """Under the usual load and slow requests through both LBs, every replica is
    replaced; each old one was stopped only once both LBs showed no session on it, and
    the requests in flight on it when it was drained completed."""
    _, version = versions
    slow = [
        LoadClient(host=address(lb), path=f"/sleep/{SLOW}", workers=POOL_TOTAL, timeout=15, max_seconds=600)
        for lb in LB_HOSTS
    ]
    with load_through(*LB_HOSTS) as clients, contextlib.ExitStack() as slow_ones:
        for client in slow:
            slow_ones.enter_context(client)
        ret, record = release(salt_run_cli, version)
        served_more(clients)
    assert ret.returncode == 0, f"orch.rolling to {version}: {record.get('reason') or ret.stderr[-2000:]}"
    for client in slow:
        assert client.result.failed == 0, f"slow requests failed during the drains: {client.result.failures}"
        assert client.result.requests >= POOL_TOTAL, "the slow requests did not flow"
    assert record["result"] == "succeeded" and record["controller"], record
    assert record["hosts"] == APP_HOSTS and record["lbs"] == LB_HOSTS, record
    FIGURES["rolling release of the fleet"] = record["ended_at"] - record["started_at"]
    assert len(record["drains"]) == POOL_TOTAL, f"one drain a replica: {record['drains']}"
    assert all(lb["idle"] for d in record["drains"] for lb in d["lbs"].values()), record["drains"]
    waited = max(lb["waited"] for drain in record["drains"] for lb in drain["lbs"].values())
    assert waited > 0.5, f"no drain waited for a request in flight: {record['drains']}"
    assert serves_only(fleet_cli, version), versions_by_host(fleet_cli)
    assert pool_serves_everywhere(), "both LBs serve every replica after the release"


def test_a_release_that_fails_on_the_second_host_is_reverted_on_every_host(
    fleet, fleet_cli, salt_run_cli, versions
):
    running, other = versions
    bad = APP_HOSTS[1]
    # Every replica started on BAD is built wrong: it never passes its check.
    failpoint = json.dumps({"pool.start": {"action": "env", "env": {"FAULT": "unhealthy"}}})
    host_run(bad, "sh", "-c", f"mkdir -p /run/cabify && echo '{failpoint}' > /run/cabify/failpoints.json")
    try:
        with load_through(*LB_HOSTS) as clients:
            ret, record = release(salt_run_cli, other, healthy_deadline=8, host_by_host=True)
            served_more(clients)
    finally:
        host_run(bad, "rm", "-f", "/run/cabify/failpoints.json")
    assert ret.returncode != 0, "orch.rolling reported success for a release that failed on a host"
    assert record["result"] == "failed", record
    assert bad in record["reason"] and "reverted: removed" in record["reason"], record["reason"]
    assert "incomplete" not in record["reason"], record["reason"]
    wait_for(lambda: serves_only(fleet_cli, running), 30, f"only version {running} on every app host")
    assert pool_serves_everywhere(), "both LBs serve every replica after the revert"


def ended_release(since: float, version: str, what: str) -> dict:
    """The history record of the first release to VERSION started after SINCE, once it
    ended."""
    return wait_for(
        lambda: next(
            (
                r
                for r in fleet_history()
                if r["started_at"] >= since and r["to"] == version and r["result"] != "running"
            ),
            None,
        ),
        300,
        f"the end of {what}",
    )


def assert_highstate_keeps(fleet_cli, version: str) -> None:
    """A plain highstate of the app hosts, under load, changes nothing: VERSION, which
    a release set, is what their pillar says."""
    with load_through(*LB_HOSTS):
        applied = fleet_cli.run(APP_HOSTS, "state.apply", timeout=600)
    failed, changed = state_results(applied)
    assert not failed, f"the highstate after the release failed: {failed}"
    assert not changed, f"the highstate after the release changed: {changed}"
    assert serves_only(fleet_cli, version), versions_by_host(fleet_cli)


def test_an_event_triggered_release_paused_between_batches_resumes_and_a_highstate_keeps_it(
    fleet, fleet_cli, salt_run_cli, versions
):
    """A release asked for by a `cabify/release/request` event from an app host is
    paused at its second batch: for 5 s no replica starts or stops anywhere, and
    cabify.status shows the pause and each LB's figures. Resumed, it ends; then a plain
    highstate of the app hosts changes nothing."""
    _, other = versions

    def journal() -> dict:
        return fleet_kv("cabify/journal/cabify") or {}

    since = time.time()
    with load_through(*LB_HOSTS) as clients:
        fleet_cli.run(
            APP_HOSTS[0],
            "event.send",
            "cabify/release/request",
            {"pool": "cabify", "version": other, "settings": FAST},
        )
        try:
            wait_for(lambda: journal().get("batch", 0) >= 2, 120, "the release at its second batch")
            paused = salt_run_cli.run("cabify.pause", "cabify")
            assert paused.returncode == 0 and paused.data["result"], paused.data
            wait_for(lambda: journal().get("phase") == "paused", 60, "the release paused")
            held = versions_by_host(fleet_cli)
            status = salt_run_cli.run("cabify.status", "cabify").data
            assert status["journal"]["phase"] == "paused", status["journal"]
            assert status["release_running"]["id"] == status["journal"]["release"], status
            assert set(status["lbs"]) == set(LB_HOSTS), status["lbs"]
            assert all(isinstance(f, dict) and "stable" in f for f in status["lbs"].values()), status["lbs"]
            # Paused: for 5 s no replica starts or stops anywhere.
            until = time.monotonic() + 5
            while time.monotonic() < until:
                assert versions_by_host(fleet_cli) == held, "a replica changed while the release was paused"
                assert journal().get("phase") == "paused", journal()
            resumed = salt_run_cli.run("cabify.resume", "cabify")
            assert resumed.returncode == 0 and resumed.data["result"], resumed.data
        finally:
            # Whatever failed above, the release must not stay paused for the next test.
            salt_run_cli.run("cabify.resume", "cabify")
        record = ended_release(since, other, f"the release to {other} the event asked for")
        served_more(clients)
    assert record["result"] == "succeeded", record.get("reason")
    assert_highstate_keeps(fleet_cli, other)


def test_a_kv_change_that_every_minion_sees_makes_one_release_that_a_highstate_keeps(
    fleet, fleet_cli, salt_run_cli, versions
):
    """Every host's beacon sees the change and the reactor asks the controller once
    for each: one release, the others counted as skipped; then a plain highstate of the
    app hosts changes nothing (the released version is their pillar's)."""
    _, other = versions
    since = time.time()
    with load_through(*LB_HOSTS) as clients:
        fleet_consul(
            "/v1/kv/cabify/desired/cabify", "PUT", {"version": other, "settings": FAST}, token=OPERATOR
        )
        record = ended_release(since, other, f"the release to {other} that the KV change asked for")
        served_more(clients)
    assert record["result"] == "succeeded" and record["to"] == other, record

    def claim_of_every_beacon() -> dict:
        claim = fleet_kv("cabify/triggers/cabify") or {}
        if claim.get("release") == record["id"] and 1 + len(claim.get("skipped", [])) >= len(HOSTS):
            return claim
        raise LookupError(f"the claim so far: {claim}")  # wait_for's message shows it

    claim = wait_for(
        claim_of_every_beacon,
        120,
        f"the change asked for by each of the {len(HOSTS)} hosts' beacons",
    )
    releases = [r for r in fleet_history() if r["started_at"] >= since]
    assert len(releases) == 1, f"one change made {len(releases)} releases: {releases}"
    assert 1 + len(claim["skipped"]) == len(HOSTS), claim
    assert fleet_kv("cabify/released/cabify")["version"] == other
    assert_highstate_keeps(fleet_cli, other)


def past_first_drains(what: str) -> dict:
    """The pool's journal once its release is at its third batch with replicas drained."""
    return wait_for(
        lambda: (
            (j := fleet_kv("cabify/journal/cabify") or {}).get("batch", 0) >= 3 and j.get("drained") and j
        ),
        180,
        f"{what} past its first drains",
    )


def recovered(dead: str, by: str) -> dict:
    """The history record of release DEAD once a recovery ended it."""
    return wait_for(
        lambda: next((r for r in fleet_history() if r["id"] == dead and r["result"] != "running"), None),
        180,
        f"{by} recovery of release {dead}",
    )


def assert_reverted(fleet_cli, record: dict, running: str) -> None:
    """RECORD's release was interrupted and reverted whole: only RUNNING everywhere."""
    assert record["result"] == "interrupted", record
    assert "reverted" in record["reason"] and "incomplete" not in record["reason"], record["reason"]
    wait_for(lambda: serves_only(fleet_cli, running), 60, f"only version {running} on every app host")
    assert pool_serves_everywhere(), "both LBs serve every replica after the recovery"


def test_a_release_whose_controller_is_killed_mid_way_is_reverted_by_the_master(
    fleet, fleet_cli, salt_master, salt_run_cli, versions
):
    """The controller's process (a salt-run) killed with -9 after its first drains: the
    master's schedule finds the journal of a release nobody runs, takes the lock and
    reverts it; the pool is never without an owner and serves throughout."""
    running, other = versions
    command = [
        os.path.join(sys.prefix, "bin", "salt-run"),
        "-c",
        salt_master.config_dir,
        "cabify.release",
        "cabify",
        other,
        "settings={min_healthy_time: 0}",
    ]
    with load_through(*LB_HOSTS) as clients:
        controller = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            journal = past_first_drains("the release")
        finally:
            controller.kill()
            controller.wait()
        dead = journal["release"]
        record = recovered(dead, "the master's")
        served_more(clients)
    assert_reverted(fleet_cli, record, running)
    status = salt_run_cli.run("cabify.status", "cabify").data
    assert status["journal"] is None and status["release_running"] is None, status
    assert status["last_release"]["recovering"] == dead, status["last_release"]


def test_a_release_whose_master_restarts_mid_way_is_reverted_once_it_is_back(
    fleet, fleet_cli, salt_master, salt_minion, salt_run_cli, versions
):
    """A release asked for by an event runs inside the master (its reactor runs
    orch.rolling, which runs the controller). The master is stopped after the release's
    first drains and started again: its schedule finds the journal of a release that no
    longer runs and reverts it; clients through both LBs see no failure meanwhile (the
    LBs and the replicas do not need the master to serve)."""
    running, other = versions
    with load_through(*LB_HOSTS) as clients:
        fleet_cli.run(
            APP_HOSTS[0],
            "event.send",
            "cabify/release/request",
            {"pool": "cabify", "version": other, "settings": FAST},
        )
        journal = past_first_drains("the release the event asked for")
        salt_minion.terminate()
        salt_master.terminate()
        salt_master.start()
        salt_minion.start()
        record = recovered(journal["release"], "the restarted master's")
        served_more(clients)
    assert_reverted(fleet_cli, record, running)
    wait_for(
        lambda: salt_master.salt_cli(timeout=10).run("test.ping", minion_tgt=salt_minion.id).returncode == 0,
        60,
        f"{salt_minion.id} answering the restarted master",
    )


# --- canaries across the fleet ------------------------------------------------------------


def canary_release(salt_run_cli, version: str, canary: dict, env: dict | None = None, **settings):
    """orch.canary of pool cabify to VERSION: the release controller's record."""
    pillar = {
        "release": {"pool": "cabify", "version": version, "settings": FAST | settings, "canary": canary}
    }
    if env is not None:
        pillar["release"]["env"] = env
    ret = salt_run_cli.run("state.orchestrate", "orch.canary", pillar=pillar)
    steps = list((ret.data or {}).get("data", {}).values()) if isinstance(ret.data, dict) else []
    step = next(iter(steps[0].values())) if steps else {}
    return ret, (step.get("changes") or {}).get("return") or {}


def test_a_canary_at_20_percent_holds_its_share_through_each_lb_then_is_promoted(
    fleet, fleet_cli, salt_run_cli, versions
):
    """One canary beside the 9 stable replicas of 3 hosts (weights from the catalog):
    through each LB, as the LB counted and as its clients saw it, the canary answers
    20 % (±2 points) of the requests of its step; then the new version is everywhere."""
    _, other = versions
    canary = {"replicas": 1, "steps": [{"weight": 20, "pause": 10}], "analysis": {"interval": 2}}
    clock = time.time() - time.monotonic()
    with load_through(*LB_HOSTS, keep_samples=True) as clients:
        ret, record = canary_release(salt_run_cli, other, canary, max_parallel=3)
        served_more(clients)
    assert ret.returncode == 0, f"orch.canary to {other}: {record.get('reason') or ret.stderr[-2000:]}"
    assert record["result"] == "succeeded" and record["strategy"] == "canary", record
    assert record["canary"]["stable"] == POOL_TOTAL, record["canary"]
    (step,) = record["canary"]["steps"]
    figures = step["figures"]
    assert abs(figures["share"]["measured"] - 20) <= 2, figures["share"]
    for lb, client in zip(LB_HOSTS, clients, strict=True):
        counted = figures["lbs"][lb]
        assert abs(counted["share"] - 20) <= 2, f"{lb} counted {counted}"
        seen = [v for t, _, v in client.samples if step["started_at"] + 0.5 <= t + clock <= step["ended_at"]]
        assert len(seen) >= 200, f"{lb}: only {len(seen)} answers in the step"
        share = 100 * sum(v == other for v in seen) / len(seen)
        assert abs(share - 20) <= 2, f"through {lb}, the canary answered {share:.1f} % of {len(seen)}"
    assert serves_only(fleet_cli, other), versions_by_host(fleet_cli)
    assert fleet_kv("cabify/weights/cabify") is None, "the canary's weights stayed"
    assert pool_serves_everywhere(), "both LBs serve every replica after the promotion"


class CanaryWatch:
    """Each LB's canary servers, as the LB itself counts them, read on its stats page
    every 50 ms: when the first failing answer was counted on any LB, and when any LB
    last sent a canary a request."""

    def __init__(self):
        self.first_failure: float | None = None
        self.last_request: dict[str, float] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _canary(lb: str) -> tuple[int, int]:
        rows = haproxy_stats(lb)
        numbers = [
            (
                sum(int(r.get(f"hrsp_{k}") or 0) for k in ("1xx", "2xx", "3xx", "4xx", "5xx", "other"))
                + int(r.get("wretr") or 0)
                + int(r.get("eresp") or 0),
                int(r.get("hrsp_5xx") or 0) + int(r.get("eresp") or 0) + int(r.get("wretr") or 0),
            )
            for r in rows
            if r["svname"].startswith("canary")
        ]
        return sum(n[0] for n in numbers), sum(n[1] for n in numbers)

    def _run(self) -> None:
        before = {lb: self._canary(lb) for lb in LB_HOSTS}
        while not self.stop.is_set():
            for lb in LB_HOSTS:
                requests, failed = self._canary(lb)
                now = time.monotonic()
                if requests > before[lb][0]:
                    self.last_request[lb] = now
                if failed > before[lb][1] and self.first_failure is None:
                    self.first_failure = now
                before[lb] = (requests, failed)
            self.stop.wait(0.05)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(5)


def test_a_canary_answering_500_is_out_of_every_lb_within_2_seconds(fleet, fleet_cli, salt_run_cli, versions):
    """A canary whose answers are all 500 (each retried on a stable replica: no client
    sees it): the controller sees its failing answers on the LBs' stats pages, takes it
    out of every LB and aborts. From the first failing answer any LB counted to the
    last request any LB sent the canary: at most 2 s. The stable version serves on."""
    running, other = versions
    canary = {"replicas": 1, "steps": [{"weight": 20, "pause": 30}]}
    with load_through(*LB_HOSTS) as clients, CanaryWatch() as watch:
        ret, record = canary_release(salt_run_cli, other, canary, env={"FAULT": "http500"})
        served_more(clients)
    assert ret.returncode != 0, "a canary answering 500 was promoted"
    assert record["result"] == "failed" and "answer(s) on the LBs since it started" in record["reason"], (
        record.get("reason")
    )
    assert watch.first_failure is not None, "no LB counted a failing answer of the canary"
    assert watch.last_request, "no LB sent the canary a request"
    took = max(watch.last_request.values()) - watch.first_failure
    FIGURES["failing canary out of every LB"] = took
    assert took <= 2.0, (
        f"the canary had requests {took:.2f}s after its first failing answer "
        f"(the controller: {record.get('abort')})"
    )
    assert record["abort"]["out_of_every_lb_after"] <= 2.0, record["abort"]
    assert serves_only(fleet_cli, running), versions_by_host(fleet_cli)
    assert fleet_kv("cabify/weights/cabify") is None, "the canary's weights stayed"
    assert pool_serves_everywhere(), "both LBs serve every replica after the abort"
