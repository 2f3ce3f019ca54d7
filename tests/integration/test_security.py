"""
Consul closed to strangers, on the one-host stack: what someone who reaches Consul's
HTTP port without a token, a load balancer's token, a minion the master does not list,
or a malformed request can do to the running pool: nothing. All of it under load, with
no failed request.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import time
import uuid

import pytest

from tests.helpers import (
    ACL_SECRETS,
    CONSUL,
    OPERATOR,
    consul,
    consul_token,
    http,
    kv_tree,
    last_release,
    registered,
    versions_running,
    wait_for,
)
from tests.load import LoadClient

# The test minion's own token (every role of the one-host stack).
HOST = "host:cabify-minion"
CONSUL_CONFIG = "/etc/consul.d/consul.json"
KEYS_ONLY_THE_CONTROLLER_WRITES = ["cabify/desired/cabify", "cabify/weights/cabify", "cabify/commands/cabify"]


@pytest.fixture
def stranger(salt_master):
    """A second minion of the test master, that master config's
    cabify_controller:release_requesters does not list."""
    factory = salt_master.salt_minion_daemon(
        f"cabify-stranger-{uuid.uuid4().hex[:6]}", overrides={"grains": {}}
    )
    with factory.started(start_timeout=120):
        yield factory


@pytest.fixture
def lb_token():
    """A token with exactly the policies an LB host's token has (its roles lb, vrrp),
    made with the management token; deleted after the test."""
    acl = _acl_utils()
    body = {
        "Description": "cabify test: an LB host's policies",
        "Policies": [{"Name": p} for p in acl.host_policies(["lb", "vrrp"])],
    }
    made = consul("PUT", "/v1/acl/token", body)
    yield made["SecretID"]
    consul("DELETE", f"/v1/acl/token/{made['AccessorID']}")


def _acl_utils():
    import importlib.util  # noqa: PLC0415
    import pathlib  # noqa: PLC0415

    path = pathlib.Path(__file__).resolve().parents[2] / "_utils" / "cabify_acl.py"
    spec = importlib.util.spec_from_file_location("cabify_acl_in_tests", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def refusals(event_listener, master_id: str, since: float, version: str) -> list[dict]:
    """The ``cabify/release/refused`` events the master fired since SINCE for VERSION."""
    events = event_listener.get_events([(master_id, "cabify/release/refused")], after_time=since)
    return [e.data for e in events if str(e.data.get("version")) == version]


def test_strangers_and_bad_requests_are_refused_and_change_nothing(
    salt_cli, salt_master, steady, stranger, lb_token, event_listener
):
    serving = registered()
    kv_before = kv_tree("cabify/")
    history_before = last_release()
    since = time.time()
    with LoadClient(max_seconds=300) as load:
        # Anyone on Consul's port, without a token: no deregistration, no KV write.
        replica = next(iter(serving))
        status, body = http("PUT", f"{CONSUL}/v1/agent/service/deregister/{replica}", token=None)
        assert status == 403, f"an anonymous deregistration of {replica} answered {status} {body[:200]!r}"
        status, body = http(
            "PUT",
            f"{CONSUL}/v1/catalog/deregister",
            {"Node": consul("GET", "/v1/agent/self")["Config"]["NodeName"], "ServiceID": replica},
            token=None,
        )
        assert status == 403, f"an anonymous catalog deregistration answered {status} {body[:200]!r}"
        for key in KEYS_ONLY_THE_CONTROLLER_WRITES:
            status, body = http("PUT", f"{CONSUL}/v1/kv/{key}", {"version": "666"}, token=None)
            assert status == 403, f"an anonymous write of {key} answered {status} {body[:200]!r}"
        # The LB's token reads services for DNS; it registers none.
        intruder = {"Name": "cabify", "ID": "intruder", "Address": "127.0.0.1", "Port": 1}
        status, body = http("PUT", f"{CONSUL}/v1/agent/service/register", intruder, token=lb_token)
        assert status == 403, f"the LB token's registration answered {status} {body[:200]!r}"
        status, body = http("PUT", f"{CONSUL}/v1/kv/cabify/desired/cabify", "666", token=lb_token)
        assert status == 403, f"the LB token's write of the desired version answered {status} {body[:200]!r}"
        # A minion that master config does not list asks for a release: refused, logged.
        asked = stranger.salt_call_cli(timeout=60).run(
            "event.send", "cabify/release/request", data={"pool": "cabify", "version": "666"}
        )
        assert asked.returncode == 0, asked.stderr
        refused = wait_for(
            lambda: refusals(event_listener, salt_master.id, since, "666"),
            60,
            "the master refusing the stranger",
        )
        assert refused[0]["requester"] == stranger.id and "release_requesters" in refused[0]["reason"], (
            refused
        )
        # Nor by posing as a beacon: without a key it is a request like any other; with
        # a key, only the pool's desired-version key counts, and what it says.
        forged = {"668": {"key": "cabify/history/cabify/x"}, "669": {}}
        for version, extra in forged.items():
            data = {"pool": "cabify", "version": version, **extra}
            sent = stranger.salt_call_cli(timeout=60).run(
                "event.send", "salt/beacon/x/cabify_desired/cabify", data=data
            )
            assert sent.returncode == 0, sent.stderr
        for version, words in (("668", "desired-version key"), ("669", "release_requesters")):
            refused = wait_for(
                lambda v=version: refusals(event_listener, salt_master.id, since, v),
                60,
                f"the forged beacon {version}",
            )
            assert words in refused[0]["reason"], refused
        # A listed minion with a malformed canary: refused before anything starts, naming the key.
        bad = {
            "pool": "cabify",
            "version": "667",
            "strategy": "canary",
            "canary": {"steps": [{"weight": 120, "pause": 1}], "analysis": {"max_error_rate": 5}},
        }
        assert salt_cli.run("event.send", "cabify/release/request", data=bad).returncode == 0
        refused = wait_for(
            lambda: refusals(event_listener, salt_master.id, since, "667"),
            60,
            "the master refusing the bad canary",
        )
        reason = refused[0]["reason"]
        assert "canary:steps" in reason and "canary:analysis:max_error_rate" in reason, reason
    load.assert_served()
    assert registered() == serving, "the pool's registrations changed"
    assert "intruder" not in consul("GET", "/v1/agent/services")
    assert kv_tree("cabify/") == kv_before, "Consul KV changed"
    assert last_release() == history_before, "a release was recorded"
    assert set(versions_running()) == {steady}


def test_only_the_operators_and_the_controllers_tokens_write_the_desired_version(steady):
    """A change of a desired version is a release (beacon cabify_desired): only the
    operators' and the controller's tokens may write one. Every host's token reads
    them (the beacon runs on every host), none writes them. The probe names no version:
    the beacon releases nothing for it."""
    key = f"{CONSUL}/v1/kv/cabify/desired/probe"
    probe = {"probe": True}
    try:
        for role in (None, HOST):
            status, _ = http("PUT", key, probe, token=role)
            assert status == 403, f"{role or 'anonymous'} wrote a desired version: HTTP {status}"
        status, raw = http("GET", f"{CONSUL}/v1/kv/cabify/desired/?keys=true", token=HOST)
        assert status in (200, 404), (
            f"a host's token cannot read the desired versions: HTTP {status} {raw[:200]!r}"
        )
        for role in (OPERATOR, "controller"):
            status, raw = http("PUT", key, probe, token=role)
            assert status == 200, (
                f"the {role} token cannot write a desired version: HTTP {status} {raw[:200]!r}"
            )
    finally:
        http("DELETE", key)


def test_a_wrong_token_is_a_clear_error_naming_the_role_and_the_pool_keeps_serving(salt_cli, steady):
    serving = registered()
    with LoadClient(max_seconds=120) as load:
        ret = salt_cli.run("state.apply", "cabify", pillar={"consul": {"api": {"token": str(uuid.uuid4())}}})
    load.assert_served()
    text = json.dumps(ret.data)
    assert ret.returncode != 0, "a highstate with an unknown token succeeded"
    assert "this host's token" in text and "consul:api:token" in text, text[-2000:]
    assert registered() == serving


def test_the_acls_are_bootstrapped_once_and_the_management_token_stays_on_the_master(
    salt_cli, salt_run_cli, highstate
):
    # The first run may make the tokens of a minion accepted since the last highstate.
    assert salt_run_cli.run("cabify_acl.ensure").returncode == 0
    again = salt_run_cli.run("cabify_acl.ensure")
    assert again.returncode == 0, again.stderr
    assert again.data["bootstrapped"] == "before", again.data
    assert not again.data["policies"] and not again.data["tokens"], (
        f"a re-run changed something: {again.data}"
    )
    management = consul_token()
    assert management, "the master keeps no management token"
    mode = os.stat(ACL_SECRETS).st_mode
    assert stat.S_IMODE(mode) == 0o600, f"{ACL_SECRETS} is {oct(stat.S_IMODE(mode))}"
    pillar = json.dumps(salt_cli.run("pillar.items", unmask=True).data)
    assert consul_token(HOST) in pillar, "the minion's pillar lacks its own token"
    assert management not in pillar, "the management token is in the minion's pillar"
    assert management not in again.stdout + again.stderr
    for log in ("/var/log/consul/agent.out", CONSUL_CONFIG):
        with open(log, encoding="utf-8", errors="replace") as handle:
            assert management not in handle.read(), f"the management token is in {log}"


def consul_pid() -> str:
    return subprocess.run(["pidof", "consul"], capture_output=True, text=True, check=False).stdout.strip()


def test_the_gossip_key_rotates_with_no_agent_restarted_and_no_failed_request(salt_run_cli, steady):
    with open(ACL_SECRETS, encoding="utf-8") as handle:
        generation = json.load(handle)["generation"]["gossip"]
    agent = consul_pid()
    with LoadClient(max_seconds=120) as load:
        ret = salt_run_cli.run(
            "state.orchestrate", "orch.consul_gossip_key", pillar={"fleet": {"target": ["cabify-minion"]}}
        )
    load.assert_served()
    assert ret.returncode == 0, ret.stdout[-2000:]
    acl = _acl_utils()
    with open(ACL_SECRETS, encoding="utf-8") as handle:
        secrets = json.load(handle)
    assert secrets["generation"]["gossip"] == generation + 1
    new = acl.gossip_key(secrets)
    rings = consul("GET", "/v1/operator/keyring")
    assert all(list(r["Keys"]) == [new] for r in rings), "the keyrings hold another key than the new one"
    assert new not in ret.stdout, "the orchestration printed the key"
    with open("/etc/consul.d/gossip.json", encoding="utf-8") as handle:
        assert json.load(handle) == {"encrypt": new}
    assert consul_pid() == agent, "the Consul agent restarted"


def test_every_token_rotates_and_the_old_ones_stop_working_with_no_failed_request(salt_run_cli, steady):
    old = {name: consul_token(name) for name in (HOST, "controller", OPERATOR)}
    with LoadClient(max_seconds=300) as load:
        ret = salt_run_cli.run(
            "state.orchestrate", "orch.consul_tokens", pillar={"fleet": {"target": ["cabify-minion"]}}
        )
    load.assert_served()
    assert ret.returncode == 0, ret.stdout[-3000:]
    for name, secret in old.items():
        status, body = http("GET", f"{CONSUL}/v1/acl/token/self", token=secret)
        assert status == 403, f"the old {name} token still works: HTTP {status} {body[:200]!r}"
        new = consul_token(name)
        assert new != secret
        status, body = http("GET", f"{CONSUL}/v1/kv/cabify/?keys=true", token=new)
        assert status in (200, 404), f"the new {name} token cannot read cabify/: HTTP {status} {body[:200]!r}"
    # The registrations were made again with the new host token: Consul's catalog
    # still follows the agent (a sync with a deleted token would be refused).
    wait_for(
        lambda: {s["ServiceID"] for s in consul("GET", "/v1/catalog/service/cabify")} == set(registered()),
        30,
        "the catalog holding exactly the agent's registrations of the pool",
    )
    assert set(versions_running()) == {steady}
