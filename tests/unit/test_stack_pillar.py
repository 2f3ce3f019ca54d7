"""The pillar rules: each bad value is named by its full pillar key, with the reason."""

from __future__ import annotations

import copy
import pathlib

import pytest
import yaml
from salt.exceptions import CommandExecutionError

from tests.unit.conftest import REPO, load

stack_pillar = load("modules", "stack_pillar")


# What a formula has no default for: pillar must give it.
FROM_PILLAR = {"keepalived": {"vrrp": {"virtual_ipaddresses": ["10.213.0.100/24"]}}}


def defaults(formula: str) -> dict:
    data = yaml.safe_load((REPO / "salt" / formula / "defaults.yaml").read_text())
    osmap = yaml.safe_load((REPO / "salt" / formula / "osmap.yaml").read_text()) or {}
    for key, value in (osmap.get("default") or {}).items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    for key, value in FROM_PILLAR.get(formula, {}).items():
        data[key] = {**data[key], **value}
    return data


def test_a_virtual_address_is_required():
    data = defaults("keepalived")
    data["vrrp"]["virtual_ipaddresses"] = []
    assert stack_pillar.problems("keepalived", data) == [
        "keepalived:vrrp:virtual_ipaddresses: must be a non-empty list of addresses with their prefix, "
        "such as 10.213.0.100/24 (got [])"
    ]


@pytest.mark.parametrize("formula", sorted(stack_pillar.RULES))
def test_shipped_defaults_are_valid(formula):
    assert stack_pillar.problems(formula, defaults(formula)) == []


@pytest.mark.parametrize("formula", sorted(stack_pillar.RULES))
def test_pillar_example_is_valid_and_documents_every_default(formula):
    example = yaml.safe_load((REPO / "salt" / formula / "pillar.example").read_text())[formula]
    assert stack_pillar.problems(formula, example) == []

    def paths(data, prefix=""):
        for key, value in data.items():
            yield prefix + key
            if isinstance(value, dict) and key not in ("service_ttl", "log-opts"):
                yield from paths(value, prefix + key + ":")

    assert set(paths(defaults(formula))) <= set(paths(example)), "pillar.example misses keys"


@pytest.mark.parametrize(
    ("formula", "path", "value", "expected"),
    [
        ("haproxy", "backend:port", "80x", "haproxy:backend:port: must be an integer"),
        ("haproxy", "backend:port", 0, "haproxy:backend:port: must be between 1 and 65535"),
        ("haproxy", "backend:port", True, "haproxy:backend:port: must be an integer"),
        (
            "haproxy",
            "backend:retry_on",
            "all-errors",
            "haproxy:backend:retry_on: has unknown retry-on keywords",
        ),
        (
            "haproxy",
            "backend:timeout_server",
            "soon",
            "haproxy:backend:timeout_server: must be an HAProxy time",
        ),
        ("haproxy", "backends", {"Cabify App": {}}, "haproxy:backends: has bad names"),
        ("cabify", "pool:replicas", -1, "cabify:pool:replicas: must be at least 0"),
        ("cabify", "pool:release:lock_ttl", 5, "cabify:pool:release:lock_ttl: must be whole seconds from 10"),
        (
            "cabify",
            "pool:canary:steps",
            [{"weight": 100, "pause": 1}],
            "cabify:pool:canary:steps: step 1: weight must be a percentage above 0 and below 100",
        ),
        ("cabify", "pools", {"shop": {"replicas": "x"}}, "cabify:pools:shop:replicas: must be an integer"),
        ("cabify", "pools", {"Shop!": {}}, "cabify:pools: has bad names"),
        ("haproxy", "defaults:extra", "option x", "haproxy:defaults:extra: must be a list"),
        ("haproxy", "resolvers:nameserver", "consul", "haproxy:resolvers:nameserver: must be an IP"),
        ("consul", "config:datacenter", "Madrid 1", "consul:config:datacenter: must be lower-case"),
        ("consul", "config:client_addr", "0.0.0.0 localhost", "consul:config:client_addr: must be an IP"),
        ("consul", "config:ports", [8500], "consul:config:ports: must be a mapping"),
        ("consul", "install:sha256", "abc", "consul:install:sha256: must be 64 lower-case hex digits"),
        ("consul", "config:acl:default_policy", "maybe", "consul:config:acl:default_policy: must be 'allow'"),
        (
            "consul",
            "api:token",
            "s3cr3t",
            "consul:api:token: must be a token's UUID (a secret: its value is not",
        ),
        ("consul", "gossip:key", "s3cr3t", "consul:gossip:key: must be 16, 24 or 32 bytes"),
        ("consul", "tls:key", "s3cr3t", "consul:tls:key: must be a PEM private key (a secret"),
        ("docker", "daemon_json:log-opts:max-size", "ten", "docker:daemon_json:log-opts:max-size"),
        ("common", "logrotate:frequency", "hourly", "common:logrotate:frequency: must be daily"),
        (
            "keepalived",
            "vrrp:priority",
            255,
            "keepalived:vrrp:priority: must be a whole number from 1 to 254",
        ),
        (
            "keepalived",
            "vrrp:virtual_ipaddresses",
            ["10.213.0.300/24"],
            "keepalived:vrrp:virtual_ipaddresses",
        ),
        ("keepalived", "vrrp:auth_pass", "much-too-long", "keepalived:vrrp:auth_pass: must be 1 to 8"),
        ("keepalived", "vrrp:unicast_peers", ["lb2"], "keepalived:vrrp:unicast_peers: must be a list of IP"),
        ("firewall", "sources:fleet", ["10.213.0.0/33"], "firewall:sources:fleet: must be a list of IPv4"),
        ("firewall", "management", [22, "ssh"], "firewall:management: must be a list of ports"),
        (
            "firewall",
            "roles:lb:stats:from",
            "everyone",
            "firewall:roles:lb:stats: from must be 'any' or one of firewall:sources (fleet, lbs, masters)",
        ),
        ("firewall", "roles:lb:stats:proto", "sctp", "firewall:roles:lb:stats: proto must be one of tcp"),
        (
            "firewall",
            "forward:app:replicas:ports",
            [],
            "firewall:forward:app:replicas: ports must be a non-empty",
        ),
        ("firewall", "roles:lb:stats:what", 'the "stats"', "firewall:roles:lb:stats: what must say"),
        ("firewall", "table", "cabify-firewall", "firewall:table: must be letters, digits or '_'"),
    ],
)
def test_bad_value_is_named_with_its_key(formula, path, value, expected):
    data = copy.deepcopy(defaults(formula))
    node = data
    *parents, leaf = path.split(":")
    for part in parents:
        node = node[part]
    node[leaf] = value
    found = stack_pillar.problems(formula, data)
    assert any(expected in problem for problem in found), found


def test_missing_required_key_is_named():
    data = defaults("consul")
    del data["config"]["datacenter"]
    assert "consul:config:datacenter: is required" in stack_pillar.problems("consul", data)


def test_unicast_peers_need_a_source_address():
    data = defaults("keepalived")
    data["vrrp"]["unicast_peers"] = ["10.213.0.22"]
    assert stack_pillar.problems("keepalived", data) == [
        "keepalived:vrrp:unicast_src_ip: is required with keepalived:vrrp:unicast_peers"
    ]


def test_vrrp_3_has_no_password_and_vrrp_2_whole_second_adverts():
    data = defaults("keepalived")
    data["vrrp"]["auth_pass"] = "secret"  # noqa: S105 (a test value)
    assert stack_pillar.problems("keepalived", data) == [
        "keepalived:vrrp:auth_pass: needs keepalived:vrrp:version 2 (VRRP 3 has no authentication)"
    ]
    data["vrrp"]["version"] = 2
    assert stack_pillar.problems("keepalived", data) == [
        "keepalived:vrrp:advert_int: must be whole seconds with keepalived:vrrp:version 2"
    ]
    data["vrrp"]["advert_int"] = 1
    assert stack_pillar.problems("keepalived", data) == []


def test_a_firewall_rule_set_to_null_is_removed_and_valid():
    data = defaults("firewall")
    data["roles"]["lb"]["stats"] = None
    assert stack_pillar.problems("firewall", data) == []


def test_url_install_needs_url_and_sha256():
    data = defaults("consul")
    data["install"]["method"] = "url"
    found = stack_pillar.problems("consul", data)
    assert any(p.startswith("consul:install:url: is required") for p in found)
    assert any(p.startswith("consul:install:sha256: is required") for p in found)


def test_check_raises_with_every_problem():
    data = defaults("haproxy")
    data["backend"]["port"] = "x"
    data["stats"]["port"] = 99999
    with pytest.raises(CommandExecutionError) as err:
        stack_pillar.check("haproxy", data)
    assert "haproxy:backend:port" in str(err.value) and "haproxy:stats:port" in str(err.value)


def test_two_backends_cannot_share_a_port():
    data = defaults("haproxy")
    data["backends"] = {"cabify": {"port": 8404}, "shop": {"port": 80}, "web": {"port": 80}}
    found = stack_pillar.problems("haproxy", data)
    assert "haproxy:backends:cabify:port: 8404 is taken by haproxy:stats:port" in found
    assert "haproxy:backends:web:port: 80 is taken by haproxy:backends:shop:port" in found


def test_unknown_formula_is_an_error():
    with pytest.raises(CommandExecutionError):
        stack_pillar.problems("nginx", {})


def test_defaults_path_exists():
    assert pathlib.Path(REPO / "salt" / "haproxy" / "defaults.yaml").is_file()


def test_too_few_slots_for_the_fleets_replicas_and_surge_is_named():
    data = defaults("haproxy")
    data["backends"] = {"cabify": {**data["backend"], "port": 80, "slots": 6, "replicas": 6, "surge": 1}}
    found = stack_pillar.problems("haproxy", data)
    expected = "haproxy:backends:cabify:slots: 6 slots cannot hold the pool's 6 replicas"
    assert any(p.startswith(expected) for p in found), found
    data["backends"]["cabify"]["slots"] = 7
    assert stack_pillar.problems("haproxy", data) == []
    data["backends"]["cabify"].update(slots=None, replicas=0)
    assert stack_pillar.problems("haproxy", data) == [
        "haproxy:backends:cabify:slots: is empty and cannot be derived: set it, or "
        "haproxy:backends:cabify:replicas (the pool's replicas on every app host)"
    ]


@pytest.mark.parametrize(
    ("formula", "path", "value", "expected"),
    [
        ("registry", "config:http:addr", "5000", "registry:config:http:addr: must be [address]:port"),
        ("cabify", "image:registry", "http://10.213.0.1:5000", "cabify:image:registry: must be a registry's"),
        ("cabify", "publish:address", "node1", "cabify:publish:address: must be"),
        ("cabify", "build:versions", ["1", "a b"], "cabify:build:versions: must be a list of versions"),
    ],
)
def test_fleet_keys_are_checked(formula, path, value, expected):
    data = copy.deepcopy(defaults(formula))
    node = data
    *parents, last = path.split(":")
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    assert any(p.startswith(expected) for p in stack_pillar.problems(formula, data)), expected
