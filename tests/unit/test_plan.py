"""The pool's plan (which replicas stay, how many start, which go), the batches of a
rolling release, spec hashes and the spec of a running replica."""

from __future__ import annotations

from tests.unit.conftest import load

plan = load("utils", "cabify_plan")


def replica(name, version="1", status="running", env=None, role="stable"):
    return {
        "name": name,
        "version": version,
        "status": status,
        "spec": plan.spec_hash(version, env),
        "role": role,
    }


def test_converged_pool_needs_nothing():
    current = [replica("a"), replica("b"), replica("c")]
    assert plan.plan(current, plan.spec_hash("1"), 3) == {"keep": ["a", "b", "c"], "start": 0, "remove": []}


def test_scale_up_and_down():
    current = [replica("a"), replica("b"), replica("c")]
    assert plan.plan(current, plan.spec_hash("1"), 5)["start"] == 2
    assert plan.plan(current, plan.spec_hash("1"), 2) == {"keep": ["a", "b"], "start": 0, "remove": ["c"]}


def test_new_version_or_env_replaces_every_replica():
    current = [replica("a"), replica("b")]
    assert plan.plan(current, plan.spec_hash("2"), 2) == {"keep": [], "start": 2, "remove": ["a", "b"]}
    assert plan.plan(current, plan.spec_hash("1", {"X": "1"}), 2)["remove"] == ["a", "b"]


def test_stopped_replicas_are_replaced_and_canaries_removed_unless_the_role_is_given():
    current = [replica("a"), replica("b", status="exited"), replica("c", role="canary", version="2")]
    assert plan.plan(current, plan.spec_hash("1"), 2) == {"keep": ["a"], "start": 1, "remove": ["b", "c"]}
    assert plan.plan(current, plan.spec_hash("1"), 2, role="stable")["remove"] == ["b"]


def test_spec_hash_is_the_same_for_the_same_values_whatever_their_types():
    assert plan.spec_hash("1", {"A": 1}, {"cpus": 0.5}) == plan.spec_hash(1, {"A": "1"}, {"cpus": "0.5"})
    assert plan.spec_hash("1", {"DRAIN_TIMEOUT": "5"}) != plan.spec_hash("1", {"DRAIN_TIMEOUT": "10"})


def test_batches_start_before_they_drain_and_cover_everything():
    assert plan.batches(3, ["a", "b", "c"], 1) == [
        {"start": 1, "drain": ["a"]},
        {"start": 1, "drain": ["b"]},
        {"start": 1, "drain": ["c"]},
    ]
    assert plan.batches(4, ["a", "b"], 3) == [{"start": 3, "drain": ["a", "b"]}, {"start": 1, "drain": []}]
    assert plan.batches(0, ["a"], 2) == [{"start": 0, "drain": ["a"]}]


def test_rolling_plan_clears_stopped_replicas_first():
    current = [replica("a"), replica("b", status="exited")]
    steps = plan.rolling_plan(current, plan.spec_hash("2"), 2, 1)
    assert steps["remove_stopped"] == ["b"] and [b["drain"] for b in steps["batches"]] == [["a"], []]


def test_clone_spec_keeps_what_the_user_set_and_drops_what_the_pool_sets():
    attrs = {
        "Config": {
            "Env": ["APP_VERSION=2", "INSTANCE=x", "PORT=8080", "PATH=/bin", "FAULT=slow", "DRAIN_TIMEOUT=5"]
        },
        "HostConfig": {"Memory": 128 * 1024 * 1024, "NanoCpus": 500_000_000},
        "NetworkSettings": {"Networks": {"shop": {}}},
    }
    spec = plan.clone_spec(attrs, {"cabify.version": "2", "cabify.role": "canary"})
    assert spec == {
        "version": "2",
        "role": "canary",
        "env": {"FAULT": "slow", "DRAIN_TIMEOUT": "5"},
        "resources": {"memory": "128m", "cpus": 0.5},
        "network": "shop",
    }
    assert plan.spec_hash("2", spec["env"], spec["resources"]) == plan.spec_hash(
        "2", {"FAULT": "slow", "DRAIN_TIMEOUT": "5"}, {"memory": "128m", "cpus": 0.5}
    )


def test_clone_spec_takes_what_was_asked_from_the_label():
    labels = {
        "cabify.version": "2",
        "cabify.role": "stable",
        "cabify.spec": '{"env": {"DRAIN_TIMEOUT": "5"}, "resources": {"cpus": 1, "memory": "1g"}}',
    }
    attrs = {"Config": {"Env": ["LANG=C.UTF-8", "DRAIN_TIMEOUT=5"]}, "HostConfig": {"NanoCpus": 10**9}}
    spec = plan.clone_spec(attrs, labels)
    assert spec["env"] == {"DRAIN_TIMEOUT": "5"} and spec["resources"] == {"cpus": 1, "memory": "1g"}
    assert plan.spec_hash("2", spec["env"], spec["resources"]) == plan.spec_hash(
        "2", {"DRAIN_TIMEOUT": "5"}, {"cpus": 1, "memory": "1g"}
    )


def image(version, created, used=False):
    return {"tag": f"cabify-app:{version}", "version": version, "created": created, "used": used}


def test_images_to_prune_keeps_the_newest_and_never_one_in_use_or_asked_for():
    images = [image("1", 10), image("2", 20, used=True), image("3", 30), image("4", 40), image("5", 50)]
    # 2 is used by a container, 1 is what the pillar runs: of 3, 4, 5 the newest 2 stay.
    assert plan.images_to_prune(images, keep=2, protect={"1"}) == ["cabify-app:3"]
    assert plan.images_to_prune(images, keep=1, protect=set()) == [
        "cabify-app:1",
        "cabify-app:3",
        "cabify-app:4",
    ]
    assert plan.images_to_prune(images, keep=5, protect=set()) == []


def test_a_failed_node_is_reaped_once_it_has_been_failed_long_enough():
    seen, reap = plan.nodes_to_reap({"node3"}, {}, now=100.0, after=30)
    assert seen == {"node3": 100.0} and reap == []
    seen, reap = plan.nodes_to_reap({"node3"}, seen, now=129.0, after=30)
    assert reap == []
    seen, reap = plan.nodes_to_reap({"node3", "lb2"}, seen, now=130.0, after=30)
    assert reap == ["node3"] and seen == {"lb2": 130.0, "node3": 100.0}


def test_a_node_that_came_back_is_forgotten():
    seen, reap = plan.nodes_to_reap(set(), {"node3": 100.0}, now=200.0, after=30)
    assert seen == {} and reap == []


FLEET = {
    "node1": {"start": 2, "old": ["a1", "a2"]},
    "node2": {"start": 2, "old": ["b1", "b2"]},
    "node3": {"start": 0, "old": []},
}


def units(batches):
    return [[(u["host"], u["start"], u["drain"]) for u in batch] for batch in batches]


def test_fleet_batches_go_round_the_hosts_max_parallel_at_a_time():
    assert units(plan.fleet_batches(FLEET, 1)) == [
        [("node1", 1, ["a1"])],
        [("node2", 1, ["b1"])],
        [("node1", 1, ["a2"])],
        [("node2", 1, ["b2"])],
    ]
    assert units(plan.fleet_batches(FLEET, 3)) == [
        [("node1", 1, ["a1"]), ("node2", 1, ["b1"]), ("node1", 1, ["a2"])],
        [("node2", 1, ["b2"])],
    ]


def test_fleet_batches_host_by_host_finish_one_host_first():
    assert units(plan.fleet_batches(FLEET, 2, host_by_host=True)) == [
        [("node1", 1, ["a1"]), ("node1", 1, ["a2"])],
        [("node2", 1, ["b1"]), ("node2", 1, ["b2"])],
    ]


def test_fleet_batches_scale_a_host_up_or_down():
    grows = {"node1": {"start": 3, "old": ["a1"]}, "node2": {"start": 0, "old": ["b1", "b2"]}}
    # The surplus goes first, so that the LBs' slots hold what starts next.
    assert units(plan.fleet_batches(grows, 1)) == [
        [("node2", 0, ["b1"])],
        [("node2", 0, ["b2"])],
        [("node1", 1, ["a1"])],
        [("node1", 1, [])],
        [("node1", 1, [])],
    ]
    assert plan.fleet_batches({"node1": {"start": 0, "old": []}}, 1) == []
