"""Each formula converges from nothing, then re-applies with no changes, and a dry run
on the converged host reports nothing to do."""

from __future__ import annotations

import json
import subprocess

import docker
import pytest

from tests.helpers import CONSUL, STATS, changed_states, failed_states, http, wait_for
from tests.integration.conftest import ensure_pool, unique_version

FORMULAS = ["common", "docker", "consul", "firewall", "haproxy", "registry", "cabify"]
BASE_IMAGE = "cabify-base:bookworm"


def _docker_answers() -> bool:
    return subprocess.run(["docker", "version"], capture_output=True, check=False).returncode == 0


def _consul_has_leader() -> bool:
    status, body = http("GET", CONSUL + "/v1/status/leader")
    return status == 200 and b":" in body


def _haproxy_stats_answer() -> bool:
    return http("GET", STATS + "/stats")[0] == 200


def _cron_running() -> bool:
    return subprocess.run(["pgrep", "-x", "cron"], capture_output=True, check=False).returncode == 0


def _firewall_loaded() -> bool:
    table = ["nft", "list", "table", "inet", "cabify_firewall"]
    return subprocess.run(table, capture_output=True, check=False).returncode == 0


def _registry_answers() -> bool:
    return http("GET", "http://127.0.0.1:5000/v2/")[0] == 200


def _app_served() -> bool:
    return http("GET", "http://127.0.0.1:80/")[0] == 200


SERVICE_UP = {
    "cabify": _app_served,
    "common": _cron_running,
    "docker": _docker_answers,
    "firewall": _firewall_loaded,
    "consul": _consul_has_leader,
    "haproxy": _haproxy_stats_answer,
    "registry": _registry_answers,
}


def apply(salt_cli, *args, **kwargs):
    ret = salt_cli.run("state.apply", *args, **kwargs)
    assert ret.data, f"state.apply {args} returned no state data: {ret.stderr or ret.stdout}"
    return ret


@pytest.mark.parametrize("formula", FORMULAS)
def test_formula_converges_from_nothing_then_has_nothing_to_do(salt_cli, highstate, formula):
    """clean, then apply: the formula changes things and its service answers; a second
    apply changes nothing."""
    ret = apply(salt_cli, f"{formula}.clean")
    assert not failed_states(ret.data), f"{formula}.clean failed: {failed_states(ret.data)}"

    ret = apply(salt_cli, formula)
    assert ret.returncode == 0 and not failed_states(ret.data), failed_states(ret.data)
    assert changed_states(ret.data), f"{formula} changed nothing after {formula}.clean"
    assert wait_for(SERVICE_UP[formula], 30, f"{formula}'s service to answer after converging")

    ret = apply(salt_cli, formula)
    assert ret.returncode == 0 and not failed_states(ret.data), failed_states(ret.data)
    assert changed_states(ret.data) == {}, "a second apply changed something"


def test_highstate_dry_run_on_the_converged_host_has_nothing_to_do(salt_cli, highstate):
    """Every formula at once, after each converged from nothing above."""
    ret = apply(salt_cli, test=True)
    not_true = {k: (v["result"], v["comment"]) for k, v in ret.data.items() if v["result"] is not True}
    assert not_true == {}, f"test=True on a converged host should be all True: {not_true}"
    assert changed_states(ret.data) == {}


def test_the_all_in_one_host_gets_every_formula_through_its_roles(salt_cli, highstate):
    """salt/top.sls targets by the `roles` grain; the all-in-one host has every role."""
    assert salt_cli.run("grains.get", "roles").data == ["consul-server", "lb", "app", "registry", "master"]
    top = salt_cli.run("state.show_top").data
    assert sorted(top["base"]) == sorted(FORMULAS), top


def test_old_app_images_are_pruned_but_never_one_in_use(salt_cli, highstate):
    """cabify:image:keep newest images stay beside the versions in use and asked for;
    a dry run names exactly what the apply removes."""
    running = ensure_pool(salt_cli, version=None)
    old, newer, newest = (unique_version(f"prune{n}-") for n in range(3))
    for version in (old, newer, newest):
        ret = salt_cli.run("cabify_docker.build_image", version, "/var/cache/cabify/app", BASE_IMAGE)
        assert ret.returncode == 0, ret.stderr
    pillar = {"cabify": {"image": {"keep": 2}, "pools": {"cabify": {"version": running}}}}

    def pruned(ret) -> dict:
        return next(s for s in ret.data.values() if s["__id__"] == "cabify-install-images-pruned")

    dry = pruned(salt_cli.run("state.apply", "cabify", pillar=pillar, test=True))
    assert dry["result"] is None and f"cabify-app:{old}" in dry["changes"]["removed"], dry
    done = pruned(salt_cli.run("state.apply", "cabify", pillar=pillar))
    assert done["result"] is True and done["changes"] == dry["changes"], (dry, done)
    tags = {tag for image in docker.from_env().images.list(name="cabify-app") for tag in image.tags}
    assert {f"cabify-app:{v}" for v in (running, "1", newer, newest)} <= tags, tags
    assert f"cabify-app:{old}" not in tags and len(tags) <= 2 + 2, tags


def registry_tags() -> set[str]:
    status, body = http("GET", "http://127.0.0.1:5000/v2/cabify-app/tags/list")
    assert status == 200, f"the registry (role registry) does not list cabify-app: HTTP {status}"
    return set(json.loads(body)["tags"] or [])


def test_the_build_host_pushes_each_version_once_and_the_registry_keeps_the_newest(salt_cli, highstate):
    """cabify.build with push (what orch.build runs): each version is pushed to the
    registry on this host, a second run pushes nothing, and the registry keeps the
    cabify:image:keep newest beside the pools' versions."""
    versions = [unique_version(f"push{n}-") for n in range(3)]

    def build(version: str) -> dict:
        pillar = {"cabify": {"build": {"versions": [version], "push": True}, "image": {"keep": 1}}}
        ret = salt_cli.run("state.apply", "cabify.build", pillar=pillar)
        assert ret.returncode == 0, ret.stderr
        return {s["__id__"]: s for s in ret.data.values()}

    try:
        for version in versions:
            states = build(version)
            assert states[f"cabify-build-image-{version}-pushed"]["changes"]["pushed"].endswith(f":{version}")
        again = build(versions[-1])
    finally:
        # The images built here are not the host's: the next apply would prune them.
        for version in versions:
            salt_cli.run("cabify_docker.remove_image", f"cabify-app:{version}")
    assert again[f"cabify-build-image-{versions[-1]}-pushed"]["changes"] == {}, "pushed the same image again"
    tags = registry_tags()
    assert {versions[1], versions[2]} <= tags, tags
    assert versions[0] not in tags, f"{versions[0]} should have been pruned from the registry: {tags}"
