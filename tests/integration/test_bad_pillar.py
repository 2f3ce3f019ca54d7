"""Bad pillar fails the run with an error naming the pillar key and the reason, and
what was running keeps running with its old configuration."""

from __future__ import annotations

import hashlib
import json
import pathlib
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.helpers import FRONTEND, consul, failed_states, haproxy_info, http, running_replicas, wait_for
from tests.integration.conftest import StandInReplica, haproxy_server_up

LIVE_FILES = ["/etc/haproxy/haproxy.cfg", "/etc/consul.d/consul.json", "/etc/docker/daemon.json"]

CASES = [
    # (id, formula, pillar, text the error must hold)
    ("port-not-a-number", "haproxy", {"haproxy": {"backends": {"cabify": {"port": "eighty"}}}},
     "haproxy:backends:cabify:port: must be an integer"),
    ("port-out-of-range", "consul", {"consul": {"config": {"ports": {"dns": 70000}}}},
     "consul:config:ports:dns: must be between 1 and 65535"),
    ("datacenter-format", "consul", {"consul": {"config": {"datacenter": "DC One!"}}},
     "consul:config:datacenter: must be lower-case letters"),
    ("consul-validate-rejects", "consul", {"consul": {"config": {"bogus_option": 1}}},
     "pillar key consul:config"),
    ("haproxy-c-rejects", "haproxy", {"haproxy": {"defaults": {"extra": ["bogus-keyword 1"]}}},
     "from pillar key haproxy:defaults:extra"),
    ("retry-on-unknown", "haproxy", {"haproxy": {"backend": {"retry_on": "everything"}}},
     "haproxy:backend:retry_on: has unknown retry-on keywords ['everything']"),
    ("backends-share-a-port", "haproxy", {"haproxy": {"backends": {"shop": {"port": 80}}}},
     "haproxy:backends:shop:port: 80 is taken by haproxy:backends:cabify:port"),
    ("list-wrong-type", "haproxy", {"haproxy": {"global": {"extra": "maxconn 10"}}},
     "haproxy:global:extra: must be a list"),
    ("missing-required-key", "consul", {"consul": {"config": {"datacenter": None}}},
     "consul:config:datacenter: is required"),
    ("bool-wrong-type", "docker", {"docker": {"daemon_json": {"live-restore": "yes"}}},
     "docker:daemon_json:live-restore: must be true or false"),
    ("replicas-negative", "cabify", {"cabify": {"pools": {"cabify": {"replicas": -1}}}},
     "cabify:pools:cabify:replicas: must be at least 0"),
    ("replicas-not-a-number", "cabify", {"cabify": {"pools": {"shop": {"replicas": "three"}}}},
     "cabify:pools:shop:replicas: must be an integer"),
    ("pool-name", "cabify", {"cabify": {"pools": {"Shop Two": {"replicas": 1}}}},
     "cabify:pools: has bad names ['Shop Two']"),
    ("version-not-a-tag", "cabify", {"cabify": {"pools": {"cabify": {"version": "2.0/beta:1"}}}},
     "cabify:pools:cabify:version: must be a Docker tag"),
    ("env-not-a-mapping", "cabify", {"cabify": {"pools": {"cabify": {"env": ["FAULT=crash"]}}}},
     "cabify:pools:cabify:env: must be a mapping"),
    ("unknown-base-image", "cabify",
     {"cabify": {"image": {"base": "registry.invalid/python:3.11", "build_base": False},
                 "pools": {"cabify": {"version": "9"}}}},
     "pillar cabify:image:base"),
    ("canary-weight-100", "cabify",
     {"cabify": {"pools": {"cabify": {"version": "9", "canary": {"steps": [{"weight": 100, "pause": 10}]}}}}},
     "cabify:pools:cabify:canary:steps: step 1: weight must be a percentage above 0 and below 100"),
    ("canary-weight-0", "cabify",
     {"cabify": {"pool": {"canary": {"steps": [{"weight": 0, "pause": 10}]}}}},
     "cabify:pool:canary:steps: step 1: weight must be a percentage above 0 and below 100"),
    ("canary-error-rate-not-a-fraction", "cabify",
     {"cabify": {"pools": {"cabify": {"canary": {"analysis": {"max_error_rate": 5}}}}}},
     "cabify:pools:cabify:canary:analysis:max_error_rate: must be a number from 0 to 1"),
    ("sha256-required-for-url", "consul",
     {"consul": {"install": {"method": "url", "url": "http://127.0.0.1:9/consul.deb"}}},
     "consul:install:sha256: is required"),
]  # fmt: skip


def _digest(path: str) -> str:
    return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


def _running() -> dict:
    """What must not change: live config files, HAProxy's process, the pools, Consul's leader."""
    return {
        "files": {path: _digest(path) for path in LIVE_FILES},
        "haproxy": haproxy_info()["Pid"],
        "replicas": {pool: running_replicas(pool) for pool in ("cabify", "shop")},
        "leader": consul("GET", "/v1/status/leader"),
    }


def _serving(replica) -> None:
    answers = [http("GET", FRONTEND + "/") for _ in range(10)]
    assert all(status == 200 for status, _ in answers), answers
    assert replica.instance in {json.loads(body)["instance"] for _, body in answers}
    services = consul("GET", "/v1/agent/services")
    assert replica.instance in services, f"consul lost {replica.instance}: {sorted(services)}"


@pytest.fixture(scope="module")
def bad_pillar_runs(salt_cli, highstate):
    """Every case applied at once (Salt's `concurrent`, each a job of its own), with a
    stand-in replica served through HAProxy before and after."""
    replica = StandInReplica("test-stand-in-bad-pillar")
    replica.register()
    try:
        wait_for(lambda: haproxy_server_up(replica.port), 30, f"{replica.instance} UP in HAProxy's stats")
        _serving(replica)
        before = _running()

        def run(case):
            _, formula, pillar, _ = case
            return salt_cli.run("state.apply", formula, pillar=pillar, concurrent=True)

        with ThreadPoolExecutor(max_workers=8) as workers:
            results = dict(zip([c[0] for c in CASES], workers.map(run, CASES), strict=True))
        after = _running()
        _serving(replica)
        yield results, before, after
    finally:
        replica.deregister()
        replica.stop()


@pytest.mark.parametrize(
    ("case", "formula", "message"), [(c[0], c[1], c[3]) for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_pillar_names_key_and_changes_nothing(bad_pillar_runs, case, formula, message):
    results, before, after = bad_pillar_runs
    ret = results[case]
    assert ret.returncode != 0, f"state.apply {formula} with bad pillar succeeded"
    errors = "\n".join(failed_states(ret.data).values()) if isinstance(ret.data, dict) else str(ret.data)
    assert message in errors, f"expected {message!r} in the error, got:\n{errors or ret.stderr}"
    assert after["files"] == before["files"], "a live config file changed"
    assert after["haproxy"] == before["haproxy"], "HAProxy was restarted or reloaded"
    assert after["replicas"] == before["replicas"], "a running pool changed"
    assert after["leader"] == before["leader"]
