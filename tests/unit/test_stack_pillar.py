"""The pillar rules: each bad value is named by its full pillar key, with the reason."""

from __future__ import annotations

import copy
import pathlib

import pytest
import yaml
from salt.exceptions import CommandExecutionError

from tests.unit.conftest import REPO, load

stack_pillar = load("modules", "stack_pillar")


def defaults(formula: str) -> dict:
    data = yaml.safe_load((REPO / "salt" / formula / "defaults.yaml").read_text())
    osmap = yaml.safe_load((REPO / "salt" / formula / "osmap.yaml").read_text()) or {}
    for key, value in (osmap.get("default") or {}).items():
        data[key] = {**data.get(key, {}), **value} if isinstance(value, dict) else value
    return data


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
        ("haproxy", "frontend:port", "80x", "haproxy:frontend:port: must be an integer"),
        ("haproxy", "frontend:port", 0, "haproxy:frontend:port: must be between 1 and 65535"),
        ("haproxy", "frontend:port", True, "haproxy:frontend:port: must be an integer"),
        ("haproxy", "backend:service", "Cabify App", "haproxy:backend:service: must be lower-case"),
        ("haproxy", "defaults:extra", "option x", "haproxy:defaults:extra: must be a list"),
        ("haproxy", "resolvers:nameserver", "consul", "haproxy:resolvers:nameserver: must be an IP"),
        ("consul", "config:datacenter", "Madrid 1", "consul:config:datacenter: must be lower-case"),
        ("consul", "config:client_addr", "0.0.0.0 localhost", "consul:config:client_addr: must be an IP"),
        ("consul", "config:ports", [8500], "consul:config:ports: must be a mapping"),
        ("consul", "install:sha256", "abc", "consul:install:sha256: must be 64 lower-case hex digits"),
        ("docker", "daemon_json:log-opts:max-size", "ten", "docker:daemon_json:log-opts:max-size"),
        ("common", "logrotate:frequency", "hourly", "common:logrotate:frequency: must be daily"),
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


def test_url_install_needs_url_and_sha256():
    data = defaults("consul")
    data["install"]["method"] = "url"
    found = stack_pillar.problems("consul", data)
    assert any(p.startswith("consul:install:url: is required") for p in found)
    assert any(p.startswith("consul:install:sha256: is required") for p in found)


def test_check_raises_with_every_problem():
    data = defaults("haproxy")
    data["frontend"]["port"] = "x"
    data["stats"]["port"] = 99999
    with pytest.raises(CommandExecutionError) as err:
        stack_pillar.check("haproxy", data)
    assert "haproxy:frontend:port" in str(err.value) and "haproxy:stats:port" in str(err.value)


def test_unknown_formula_is_an_error():
    with pytest.raises(CommandExecutionError):
        stack_pillar.problems("nginx", {})


def test_defaults_path_exists():
    assert pathlib.Path(REPO / "salt" / "haproxy" / "defaults.yaml").is_file()
