"""The firewall's nftables file, rendered from the formula's defaults and pillar for each
kind of host: nft accepts it (`nft -c`), and it opens what the host's roles serve and
nothing else."""

from __future__ import annotations

import pathlib
import shutil
import subprocess

import jinja2
import pytest
import yaml

from tests.unit.conftest import REPO

FIREWALL = REPO / "salt" / "firewall"


def render(host_roles: list[str], **pillar) -> str:
    data = yaml.safe_load((FIREWALL / "defaults.yaml").read_text())
    data["sources"] = {
        "fleet": ["10.213.0.11", "10.213.0.21"],
        "lbs": ["10.213.0.21"],
        "masters": ["10.213.0.1"],
    }
    data.update(pillar)
    template = jinja2.Template(
        (FIREWALL / "files" / "firewall.nft.jinja").read_text(), undefined=jinja2.StrictUndefined
    )
    return template.render(firewall=data, host_roles=host_roles)


@pytest.mark.skipif(not shutil.which("nft"), reason="nft is not installed")
@pytest.mark.parametrize(
    "roles", [["app", "consul-server"], ["lb", "vrrp"], ["consul-server", "lb", "app", "registry", "master"]]
)
def test_nft_accepts_the_rules_of_each_kind_of_host(tmp_path: pathlib.Path, roles):
    rules = tmp_path / "firewall.nft"
    rules.write_text(render(roles))
    checked = subprocess.run(["nft", "-c", "-f", str(rules)], capture_output=True, text=True, check=False)
    assert checked.returncode == 0, checked.stderr


def test_an_app_host_opens_consul_to_the_fleet_and_its_replicas_to_the_lbs_only():
    rules = render(["app", "consul-server"])
    assert "policy drop;" in rules and "ct state established,related accept" in rules
    assert 'ip saddr @fleet tcp dport { 8300 } accept comment "consul-server: Consul server RPC"' in rules
    assert "ip saddr @masters tcp dport { 8500 } accept" in rules
    assert "ct status dnat ip saddr @lbs tcp dport { 8080 } accept" in rules
    assert "ct status dnat tcp dport { 8080 } drop" in rules
    assert "dport { 80 }" not in rules and "ip protocol 112" not in rules and "4505" not in rules


def test_an_lb_serves_its_frontends_to_anyone_while_haproxy_listens_and_hears_vrrp_from_the_lbs():
    rules = render(["lb", "vrrp"])
    assert "tcp dport { 80 } socket transparent 0 accept" in rules
    assert "ip saddr @lbs ip protocol 112 accept" in rules
    assert "ip saddr @masters tcp dport { 8404 } accept" in rules
    assert "8300" not in rules and "ct status dnat" not in rules


def test_a_rule_set_to_null_is_left_out_and_management_ports_are_open():
    data = yaml.safe_load((FIREWALL / "defaults.yaml").read_text())
    roles = data["roles"] | {"lb": data["roles"]["lb"] | {"stats": None}}
    rules = render(["lb"], roles=roles, management=[22, 2024])
    assert "8404" not in rules
    assert 'tcp dport { 22, 2024 } accept comment "remote access"' in rules
