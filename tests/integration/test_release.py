"""Rolling releases through `state.apply cabify`: zero failed requests, automatic revert
of a release that does not become healthy, one release at a time, a dry run that
prints the plan, and every trigger (event, KV key, orchestration, runner)."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.helpers import (
    CONSUL,
    OPERATOR,
    consul,
    failed_states,
    http,
    kv_get,
    kv_tree,
    last_release,
    pool_lock_held,
    pool_settled,
    pool_state,
    running_replicas,
    versions_running,
    wait_for,
)
from tests.integration.conftest import FAILPOINTS, QUICK_RELEASE, unique_version
from tests.load import LoadClient

# A batch counts once its replicas are UP in HAProxy; a test that needs them watched for
# longer (a crash a second after the start) says so.
FAST = {"min_healthy_time": 0, "healthy_deadline": 15}


def release(
    salt_cli, version: str, replicas: int = 3, env: dict | None = None, pool: str = "cabify", **settings
):
    """A release of POOL to VERSION by state.apply; drain_timeout is a pool setting,
    the rest of SETTINGS release settings."""
    overrides = {"drain_timeout": settings.pop("drain_timeout")} if "drain_timeout" in settings else {}
    pool_settings = {"version": version, "replicas": replicas, "env": env or {}, "release": FAST | settings}
    pillar = {"cabify": {"pools": {pool: pool_settings | overrides}}}
    # queue: a release that an event or the KV key started may still be finishing.
    return salt_cli.run("state.apply", "cabify", pillar=pillar, queue=True)


def wait_release_end(version: str, pool: str = "cabify", timeout: float = 240) -> dict:
    """The record of the release of POOL to VERSION, once it has ended."""
    return wait_for(
        lambda: (r := last_release(pool)).get("to") == version and r["result"] != "running" and r,
        timeout,
        f"the end of the release of {pool} to {version}",
    )


def test_rolling_release_with_zero_failed_requests(salt_cli, steady):
    new = unique_version("roll")
    with LoadClient(max_seconds=240) as load:
        ret = release(salt_cli, new)
        assert ret.returncode == 0, failed_states(ret.data)
        wait_for(lambda: pool_settled(3), 30, "3 replicas registered and UP after the release")
    load.assert_served()
    assert versions_running() == {new: 3}
    assert set(load.result.versions) == {steady, new}
    record = last_release()
    assert record["result"] == "succeeded" and record["to"] == new and record["from"] == [steady]


def test_failed_releases_are_reverted(salt_cli, steady):
    """A release whose replicas never pass their checks, and one whose replicas crash:
    both stop, the old replicas (never touched) keep serving."""
    before = running_replicas()
    with LoadClient(max_seconds=240) as load:
        for fault, why in (("unhealthy", "not healthy"), ("crash", "crashed")):
            new = unique_version("fail")
            env = {"FAULT": fault, "CRASH_AFTER": "1"}
            ret = release(salt_cli, new, env=env, healthy_deadline=3, min_healthy_time=1)
            assert ret.returncode != 0, f"a release with FAULT={fault} succeeded"
            wait_for(lambda: pool_settled(3), 30, "the pool back to 3 registered, UP replicas")
            assert running_replicas() == before, "version 1 replicas were replaced"
            record = last_release()
            assert record["result"] == "failed" and record["to"] == new and why in record["reason"], record
    load.assert_served()
    assert versions_running() == {steady: 3}


def test_second_release_at_once_is_refused(salt_cli, salt_minion, steady):
    results = {}
    first_version, second_version = unique_version("first"), unique_version("second")

    def slow_release():
        results["first"] = release(salt_cli, first_version, min_healthy_time=4, max_parallel=3)

    first = threading.Thread(target=slow_release)
    first.start()
    wait_for(lambda: kv_get("cabify/locks/cabify") is not None, 30, "the first release's lock")
    # Salt itself runs one state.apply at a time per minion; the pool's lock is what
    # stops a second release from anywhere else (another minion, salt-call, a runner).
    other_cli = salt_minion.salt_call_cli(timeout=300)  # one CLI object runs one command at a time
    second = other_cli.run("cabify_release.rolling", "cabify", second_version, replicas=3)
    first.join(timeout=300)
    assert second.returncode != 0
    errors = str(second.data) + second.stderr + second.stdout
    assert "another release of pool cabify is running" in errors and f"to version {first_version}" in errors
    assert results["first"].returncode == 0, (
        failed_states(results["first"].data) or results["first"].stderr[-2000:]
    )
    assert versions_running() == {first_version: 3}


def _failpoint_times(name: str) -> int:
    """How many more times failpoint NAME fires (0 once it is used up)."""
    armed = json.loads(FAILPOINTS.read_text()) if FAILPOINTS.exists() else {}
    return int(armed.get(name, {}).get("times", 0))


def test_release_waits_for_a_recovery_then_history_keeps_the_newest_100(salt_cli, steady, failpoints):
    """A release asked while the heal's recovery holds the pool's lock waits for it
    instead of being refused. When it ends, the pool's history keeps its newest 100
    records (and any still running)."""
    seeded = [f"20000101T{n:06d}-seed" for n in range(100)]  # older than any real release
    for release_id in seeded:
        record = {"id": release_id, "pool": "cabify", "to": "0", "result": "succeeded"}
        assert consul("PUT", f"/v1/kv/cabify/history/cabify/{release_id}", record) is True
    before = kv_tree("cabify/history/cabify/")
    # The failpoint fires on each wait for the lock and changes nothing: its count shows the wait.
    failpoints({"release.lock-wait": {"action": "sleep", "seconds": 0, "times": 1000}})
    new = unique_version("wait")
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(ret=release(salt_cli, new)))
    try:
        with pool_lock_held({"id": "recovery-test", "minion": "test", "strategy": "recovery"}):
            thread.start()
            wait_for(
                lambda: _failpoint_times("release.lock-wait") < 1000,
                60,
                "the release waiting for the recovery",
            )
    finally:
        if thread.ident:
            thread.join(timeout=300)
    assert result["ret"].returncode == 0, failed_states(result["ret"].data) or result["ret"].stderr[-2000:]
    record = last_release()
    assert record["to"] == new and record["result"] == "succeeded", record
    assert versions_running() == {new: 3}

    after = kv_tree("cabify/history/cabify/")
    ids = sorted({r["id"] for r in before.values()} | {record["id"]}, reverse=True)
    running = {r["id"] for r in before.values() if r.get("result") == "running"}
    assert {r["id"] for r in after.values()} == set(ids[:100]) | running


def test_max_parallel_two_with_four_replicas_dry_run_and_drain_timeout(salt_cli, steady):
    """A release that also scales 3 -> 4 and changes drain_timeout (which every replica
    gets as the app's DRAIN_TIMEOUT), 2 at a time; its dry run tells the batches first."""
    new = unique_version("par")
    before = running_replicas()
    settings = {"version": new, "replicas": 4, "drain_timeout": 7, "release": FAST | {"max_parallel": 2}}
    dry = salt_cli.run("state.apply", "cabify", test=True, pillar={"cabify": {"pools": {"cabify": settings}}})
    plan = pool_state(dry.data)
    assert plan["result"] is None
    assert [(b["start"], len(b["drain"])) for b in plan["changes"]["release"]["batches"]] == [(2, 2), (2, 1)]
    assert running_replicas() == before, "test=True changed the pool"
    with LoadClient(max_seconds=240) as load:
        ret = release(salt_cli, new, replicas=4, max_parallel=2, drain_timeout=7)
        assert ret.returncode == 0, failed_states(ret.data)
    load.assert_served()
    assert versions_running() == {new: 4}
    import docker  # noqa: PLC0415

    for name in running_replicas():
        assert "DRAIN_TIMEOUT=7" in docker.from_env().containers.get(name).attrs["Config"]["Env"]


def test_event_triggers_a_release_that_the_next_highstate_keeps(salt_cli, steady):
    version = unique_version("ev")
    data = {"pool": "cabify", "version": version, "settings": QUICK_RELEASE}
    ret = salt_cli.run("event.send", "cabify/release/request", data=data)
    assert ret.returncode == 0, ret.stderr
    record = wait_release_end(version)
    assert record["result"] == "succeeded" and record["controller"], record
    wait_for(lambda: versions_running() == {version: 3} and pool_settled(3), 30, f"{version} alone, settled")
    assert kv_get("cabify/released/cabify")["version"] == version
    # The version the release set is the pool's in pillar now: a plain highstate keeps it.
    ret = salt_cli.run("state.apply", queue=True)
    assert ret.returncode == 0, failed_states(ret.data)
    changed = {k: v["comment"] for k, v in ret.data.items() if v.get("changes")}
    assert not changed, f"the highstate after the release changed {changed}"
    assert versions_running() == {version: 3}


def test_kv_desired_version_triggers_exactly_one_release(steady):
    version = unique_version("kv")
    value = {"version": version, "settings": QUICK_RELEASE}
    status, _ = http("PUT", CONSUL + "/v1/kv/cabify/desired/cabify", value, token=OPERATOR)
    assert status == 200
    assert wait_release_end(version)["result"] == "succeeded"
    wait_for(lambda: versions_running() == {version: 3} and pool_settled(3), 30, f"{version} alone, settled")
    releases = [r for r in kv_tree("cabify/history/cabify/").values() if r["to"] == version]
    assert len(releases) == 1, f"one change of the key made {len(releases)} releases"


def test_orchestration_fails_when_a_host_release_fails(salt_run_cli, steady):
    new = unique_version("orch")
    settings = FAST | {"healthy_deadline": 3}
    pillar = {
        "release": {"pool": "cabify", "version": new, "env": {"FAULT": "unhealthy"}, "settings": settings}
    }
    ret = salt_run_cli.run("state.orchestrate", "orch.rolling", pillar=pillar)
    assert ret.returncode != 0, "orch.rolling reported success for a host whose release failed"
    assert versions_running() == {steady: 3}
    assert last_release()["result"] == "failed" and last_release()["to"] == new


def test_orchestration_without_a_pool_says_what_is_missing(salt_run_cli, highstate):
    ret = salt_run_cli.run("state.orchestrate", "orch.rolling", pillar={"release": {"version": "2"}})
    assert ret.returncode != 0
    assert "release:pool and release:version are required" in str(ret.data)


class _Receiver(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.server.posts.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def test_the_controller_posts_each_step_to_the_webhooks(salt_run_cli, steady):
    """A small HTTP receiver on loopback gets the release's JSON notices, in order,
    the end one with the outcome; a second URL that refuses costs the release nothing."""
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    receiver.posts = []
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    try:
        version = unique_version("hook")
        hooks = [f"http://127.0.0.1:{receiver.server_address[1]}/cabify", "http://127.0.0.1:9/refused"]
        ret = salt_run_cli.run(
            "cabify.release", "cabify", version, settings=QUICK_RELEASE | {"webhooks": hooks}
        )
        assert ret.returncode == 0 and ret.data["result"] == "succeeded", ret.data
        wait_for(lambda: any(p["step"] == "end" for p in receiver.posts), 15, "the end notice")
    finally:
        receiver.shutdown()
        receiver.server_close()
    steps = [p["step"] for p in receiver.posts]
    assert steps[0] == "start" and steps[-1] == "end", steps
    assert {"prepare", "plan", "batch", "barrier", "drained", "batch-done"} <= set(steps), steps
    assert all(p["release"] == ret.data["id"] and p["pool"] == "cabify" for p in receiver.posts)
    assert receiver.posts[-1]["record"]["result"] == "succeeded" and receiver.posts[-1]["to"] == version


def test_a_webhook_that_is_not_http_is_refused_naming_the_key(salt_run_cli, steady):
    ret = salt_run_cli.run("cabify.release", "cabify", "2", settings={"webhooks": ["file:///etc/passwd"]})
    assert ret.returncode != 0 and "release:webhooks" in ret.data["reason"], ret.data
    assert versions_running() == {steady: 3}


def test_runners_show_status_and_history(salt_run_cli, steady):
    history = salt_run_cli.run("cabify.history", "cabify", limit=3)
    assert history.returncode == 0 and isinstance(history.data, list), history.stdout
    newest = history.data[0]
    assert newest["id"] == last_release()["id"] and newest["result"] in ("succeeded", "failed")
    assert newest["started"] <= newest["ended"], "start and end are the release's times"
    status = salt_run_cli.run("cabify.status", "cabify")
    assert status.returncode == 0, status.stdout
    assert status.data["release_running"] is None
    assert status.data["instances"] == {steady: {"passing": 3}}
    everything = salt_run_cli.run("cabify.status")
    assert {"cabify", "shop"} <= set(everything.data), everything.data
