"""The firewall (nftables, default drop inbound) seen from other hosts: containers on
two networks of their own probe this host. One network stands for the fleet (the
firewall's `fleet` and `masters` sources for this test), the other for anyone else.
Each open port answers (a connection, or a refusal where nothing listens), and each
closed one swallows the attempt (a timeout). Docker's own tables are untouched: the
pools serve under load while the rules are loaded, and Salt keeps answering."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import subprocess
from collections.abc import Iterator

import docker
import pytest

from tests.helpers import PORT_PROBE, failed_states
from tests.load import LoadClient

TABLE = "cabify_firewall"
PROBE_IMAGE = "cabify-base:bookworm"
INSIDE, OUTSIDE = "10.214.0.0/24", "10.215.0.0/24"
# What this host (every role) serves to anyone, what only to the fleet and the
# master, and what to nobody else (loopback services, whatever listens).
TO_ANYONE = [80, 8081, 22, 2024]
TO_THE_FLEET = [4505, 4506, 5000, 8300, 8301, 8404, 8500]
TO_NOBODY = [8600, 8302, 9999]


def probe(network: str, ports: list[int]) -> dict[int, str]:
    """From a container on NETWORK, each port of this host (the network's gateway):
    open, refused (reached, nothing listens) or filtered (no answer)."""
    client = docker.from_env()
    gateway = client.networks.get(network).attrs["IPAM"]["Config"][0]["Gateway"]
    out = client.containers.run(
        PROBE_IMAGE,
        ["python3", "-c", PORT_PROBE, *(f"{gateway}:{port}" for port in ports)],
        network=network,
        remove=True,
    )
    return {int(target.rsplit(":", 1)[1]): state for target, state in json.loads(out).items()}


@contextlib.contextmanager
def networks() -> Iterator[None]:
    client = docker.from_env()
    made = []
    try:
        for name, subnet in (("cabify-probe-inside", INSIDE), ("cabify-probe-outside", OUTSIDE)):
            with contextlib.suppress(docker.errors.NotFound):
                client.networks.get(name).remove()
            gateway = str(next(ipaddress.ip_network(subnet).hosts()))
            ipam = docker.types.IPAMConfig(
                pool_configs=[docker.types.IPAMPool(subnet=subnet, gateway=gateway)]
            )
            made.append(client.networks.create(name, driver="bridge", ipam=ipam))
        yield
    finally:
        for network in made:
            network.remove()


@pytest.fixture
def probe_networks(salt_cli, highstate) -> Iterator[None]:
    """The two probe networks, and the firewall loaded with INSIDE as the fleet and the
    master; the pillar's own rules are loaded again afterwards."""
    with networks():
        yield
    ret = salt_cli.run("state.apply", "firewall")
    assert ret.returncode == 0, f"loading the pillar's firewall again: {failed_states(ret.data)}"


def test_each_port_is_open_to_exactly_whom_its_role_serves(salt_cli, probe_networks):
    sources = {"fleet": [INSIDE], "masters": [INSIDE], "lbs": [INSIDE]}
    with LoadClient(workers=4, max_seconds=120) as load:
        ret = salt_cli.run("state.apply", "firewall", pillar={"firewall": {"sources": sources}})
        assert ret.returncode == 0, failed_states(ret.data)
        # The Salt connection the rules were loaded through still works.
        assert salt_cli.run("test.ping").data is True
    load.assert_served()
    inside = probe("cabify-probe-inside", TO_ANYONE + TO_THE_FLEET + TO_NOBODY)
    outside = probe("cabify-probe-outside", TO_ANYONE + TO_THE_FLEET + TO_NOBODY)
    for port in TO_ANYONE:
        assert inside[port] != "filtered" and outside[port] != "filtered", (port, inside, outside)
    for port in TO_THE_FLEET:
        assert inside[port] != "filtered", f"port {port} closed to the fleet: {inside}"
        assert outside[port] == "filtered", f"port {port} open to anyone: {outside}"
    for port in TO_NOBODY:
        assert inside[port] == "filtered" and outside[port] == "filtered", (port, inside, outside)
    assert inside[80] == outside[80] == "open", "the frontend does not answer through the firewall"


def test_the_firewall_keeps_to_its_own_table_and_a_dry_run_tells_the_truth(salt_cli, highstate):
    """Docker's tables are still in the ruleset beside the firewall's; a dry run after
    someone deleted the table says it would load the rules, and the apply does."""
    tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, check=True).stdout
    assert f"table inet {TABLE}" in tables, tables
    assert "table ip nat" in tables and "table ip filter" in tables, f"Docker's tables went: {tables}"
    subprocess.run(["nft", "delete", "table", "inet", TABLE], check=True)
    try:
        dry = salt_cli.run("state.apply", "firewall", test=True)
        loaded = next(s for s in dry.data.values() if s["__id__"] == "firewall-service-rules-loaded")
        assert loaded["result"] is None, loaded
    finally:
        ret = salt_cli.run("state.apply", "firewall")
    assert ret.returncode == 0, failed_states(ret.data)
    tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, check=True).stdout
    assert f"table inet {TABLE}" in tables, tables
