"""The KV layout and value codec shared by modules, beacons and runner; failpoints that
fire as many times as a test armed them."""

from __future__ import annotations

import json

import consul
import docker.errors
import pytest
from salt.exceptions import CommandExecutionError

from tests.unit.conftest import load

kv = load("utils", "cabify_kv")
failpoints = load("utils", "cabify_failpoints")


def test_keys_are_per_pool_and_pools_can_be_read_back():
    assert kv.lock("shop") == "cabify/locks/shop"
    assert kv.history("shop", "r1") == "cabify/history/shop/r1"
    assert kv.pool_of(kv.history("shop", "r1"), "history") == "shop"
    assert kv.pool_of(kv.desired("shop"), "desired") == "shop"
    assert kv.pool_of("other/desired/shop", "desired") is None


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        (b'{"a": 1}', {"a": 1}),
        (b'"abort"', "abort"),
        (b"1.10", "1.10"),
        (b" 3\n", "3"),
        (b"", None),
        (None, None),
    ],
)
def test_decode_keeps_versions_as_text(raw, value):
    assert kv.decode(raw) == value


def test_failpoint_fires_its_times_then_is_gone(tmp_path, monkeypatch):
    path = tmp_path / "failpoints.json"
    monkeypatch.setattr(failpoints, "PATH", str(path))
    failpoints.hit("pool.drain")  # no file: nothing
    path.write_text(json.dumps({"pool.drain": {"action": "error", "times": 2}}))
    for _ in range(2):
        with pytest.raises(CommandExecutionError, match=r"failpoint pool\.drain"):
            failpoints.hit("pool.drain")
    failpoints.hit("pool.drain")
    assert json.loads(path.read_text()) == {}


def test_failpoint_raises_the_service_library_s_own_errors(tmp_path, monkeypatch):
    path = tmp_path / "failpoints.json"
    monkeypatch.setattr(failpoints, "PATH", str(path))
    path.write_text(json.dumps({"a": {"action": "docker-error"}, "b": {"action": "consul-error"}}))
    with pytest.raises(docker.errors.APIError):
        failpoints.hit("a")
    with pytest.raises(consul.ConsulException):
        failpoints.hit("b")
    with pytest.raises(docker.errors.APIError):
        failpoints.hit("a")  # no `times`: every time
