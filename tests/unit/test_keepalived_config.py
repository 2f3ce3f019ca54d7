"""keepalived.conf rendered from the formula's defaults and a fleet LB's pillar: VRRP 3
adverts every 0.5 s to the other LB, no preemption unless a delay is set, HAProxy's
liveness as track script, a password only where pillar gives one. (The fleet tier
checks it with `keepalived --config-test` and moves the address with it.)"""

from __future__ import annotations

import jinja2
import yaml

from tests.unit.conftest import REPO

KEEPALIVED = REPO / "salt" / "keepalived"
LB1 = {
    "virtual_ipaddresses": ["10.213.0.100/24"],
    "priority": 150,
    "unicast_src_ip": "10.213.0.21",
    "unicast_peers": ["10.213.0.22"],
}


def render(**vrrp) -> str:
    data = yaml.safe_load((KEEPALIVED / "defaults.yaml").read_text())
    data["vrrp"] |= LB1 | vrrp
    source = (KEEPALIVED / "files" / "keepalived.conf.jinja").read_text()
    return jinja2.Template(source, undefined=jinja2.StrictUndefined).render(keepalived=data, router_id="lb1")


def test_an_lb_of_the_pair_sends_vrrp_3_adverts_to_the_other_and_never_preempts():
    conf = render()
    for line in (
        "version 3",
        "advert_int 0.5",
        "priority 150",
        "nopreempt",
        "unicast_src_ip 10.213.0.21",
        "10.213.0.22",
        "10.213.0.100/24 dev eth0",
        "chk_haproxy",
        'script "/usr/local/sbin/keepalived-check-haproxy /run/haproxy.pid"',
        "fall 1",
    ):
        assert line in conf, f"{line!r} missing from:\n{conf}"
    assert "preempt_delay" not in conf and "authentication" not in conf


def test_a_preempt_delay_and_a_password_are_written_when_pillar_gives_them():
    conf = render(preempt_delay=30, version=2, advert_int=1, auth_pass="s3cret")  # noqa: S106 (a test value)
    assert "preempt_delay 30" in conf and "nopreempt" not in conf
    assert "auth_type PASS" in conf and "auth_pass s3cret" in conf and "version 2" in conf
