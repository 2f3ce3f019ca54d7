"""Consul's ACLs as data: tokens derived from the master's seed, the policies of each
role, and what differs between a token in Consul and the one wanted."""

from __future__ import annotations

import base64
import json
import os
import stat
import uuid

import pytest

from tests.unit.conftest import load

acl = load("utils", "cabify_acl")
kv = load("utils", "cabify_kv")
SECRETS = {"seed": "ab" * 32, "generation": {"tokens": 1, "gossip": 1}}


def test_tokens_are_derived_the_same_every_time_and_differ_by_name_and_generation():
    first = acl.token_ids(SECRETS, "host:node1")
    assert first == acl.token_ids(SECRETS, "host:node1")
    others = [
        acl.token_ids(SECRETS, "agent:node1"),
        acl.token_ids(SECRETS, "host:node2"),
        acl.token_ids(SECRETS, "host:node1", generation=2),
    ]
    ids = {first["AccessorID"], first["SecretID"]} | {i for o in others for i in o.values()}
    assert len(ids) == 8, "two tokens share an ID"
    for value in ids:
        assert str(uuid.UUID(value)) == value


def test_the_gossip_key_is_32_bytes_and_changes_with_its_generation():
    key = acl.gossip_key(SECRETS)
    assert len(base64.b64decode(key)) == 32
    assert acl.gossip_key(SECRETS, 2) != key


def test_the_secrets_file_is_made_once_readable_by_root_only(tmp_path):
    path = str(tmp_path / "cabify" / "consul-acl.json")
    assert acl.load(path, create=False) is None
    made = acl.load(path)
    assert acl.load(path) == made
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
    assert len(bytes.fromhex(made["seed"])) == 32


@pytest.mark.parametrize(
    ("roles", "expected"),
    [
        (["lb", "vrrp"], ["cabify-host"]),
        (["app", "consul-server"], ["cabify-host", "cabify-app", "cabify-consul-server"]),
        ([], ["cabify-host"]),
    ],
)
def test_a_host_token_gets_its_roles_policies(roles, expected):
    assert acl.host_policies(roles) == expected


def rules(name: str, pools=("cabify", "shop")) -> dict:
    return json.loads(acl.policies(list(pools))[name]["Rules"])


def test_anonymous_may_only_read_services_and_nodes():
    assert rules("cabify-dns") == {
        "node_prefix": {"": {"policy": "read"}},
        "service_prefix": {"": {"policy": "read"}},
    }


def test_an_lb_writes_nothing():
    written = [
        (kind, name)
        for kind, names in rules("cabify-host").items()
        for name, p in names.items()
        if p["policy"] != "read"
    ]
    assert written == []


def test_app_hosts_write_only_the_pools_services_and_not_the_desired_versions_or_commands():
    app = rules("cabify-app")
    assert app["service"] == {"cabify": {"policy": "write"}, "shop": {"policy": "write"}}
    assert app["service_prefix"] == {"": {"policy": "read"}}
    writable = {k for k, p in app["key_prefix"].items() if p["policy"] == "write"}
    assert not any(
        k.startswith(("cabify/desired/", "cabify/commands/", "cabify/released/")) for k in writable
    )


def test_only_the_controller_and_operators_write_the_desired_versions():
    def writes_desired(name: str) -> bool:
        keys = rules(name).get("key_prefix", {})
        return any(
            "cabify/desired/".startswith(prefix) and p["policy"] == "write" for prefix, p in keys.items()
        )

    assert [n for n in acl.policies(["cabify"]) if writes_desired(n)] == [
        "cabify-controller",
        "cabify-operator",
    ]


def test_wanted_tokens_cover_the_master_and_every_minion_with_its_node_identity():
    wanted = acl.wanted_tokens(SECRETS, {"lb1": {"roles": ["lb"], "node": "lb1"}}, "dc1")
    assert set(wanted) == {"controller", "operator", "host:lb1", "agent:lb1"}
    assert wanted["agent:lb1"]["NodeIdentities"] == [{"NodeName": "lb1", "Datacenter": "dc1"}]
    assert [p["Name"] for p in wanted["host:lb1"]["Policies"]] == ["cabify-host"]
    assert all(acl.is_ours(t) for t in wanted.values())


def test_token_changes_are_exact():
    wanted = acl.wanted_tokens(SECRETS, {"n1": {"roles": ["app"], "node": "n1"}}, "dc1")["host:n1"]
    assert acl.token_changes(None, wanted) == ["created"]
    assert acl.token_changes(dict(wanted), wanted) == []
    assert acl.token_changes({**wanted, "Policies": [{"Name": "cabify-host"}]}, wanted) == ["policies"]


def test_a_refused_token_is_recognised_and_the_management_token_is_never_said():
    assert kv.denied(Exception("403 ACL not found"))
    assert kv.denied(Exception("Permission denied: Missing service:write on cabify"))
    assert not kv.denied(Exception("connection refused"))
    secrets = {**SECRETS, "management": {acl.cluster(["127.0.0.1"], 8500): {"SecretID": "s3cr3t"}}}
    assert acl.management(secrets, "127.0.0.1:8500") == "s3cr3t"
    assert "s3cr3t" not in acl.redact("HTTP 500 for token s3cr3t", secrets)


def test_roles_come_from_the_master_never_from_the_minion():
    pillar = {"fleet": {"hosts": {"lb1": {"roles": ["vrrp", "lb"]}}}}
    opts = {"cabify_acl": {"roles": {"aio": ["app", "lb"]}}}
    assert acl.roles("lb1", pillar, opts) == ["lb", "vrrp"]
    assert acl.roles("aio", pillar, opts) == ["app", "lb"]
    assert acl.roles("stranger", pillar, opts) == []


def test_a_token_says_its_generation():
    wanted = acl.wanted_tokens(SECRETS, {}, "dc1")["operator"]
    assert acl.token_generation(wanted) == 1
    assert acl.token_generation({"Description": "someone else's"}) is None
