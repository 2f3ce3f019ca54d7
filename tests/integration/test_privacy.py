"""A minion gets the formulas and this project's modules from the master, and nothing
else of the checkout: pillar stays on the master."""

from __future__ import annotations

import pytest

PRIVATE = [
    "salt://pillar/stack.sls",
    "salt://stack.sls",
    "salt://README.md",
    "salt://Makefile",
    "salt://conf/master.yaml",
    "salt://tests/conftest.py",
    "salt://.git/config",
]


@pytest.mark.parametrize("url", PRIVATE)
def test_minion_cannot_download_what_is_not_a_formula_or_module(salt_cli, highstate, url):
    ret = salt_cli.run("cp.get_file_str", url)
    assert not ret.data, f"a minion downloaded {url}: {str(ret.data)[:200]!r}"


def test_minion_lists_only_formulas_and_modules(salt_cli, highstate):
    files = salt_cli.run("cp.list_master").data
    assert (
        "cabify/init.sls" in files and "_modules/cabify_pool.py" in files and "_utils/cabify_kv.py" in files
    )
    tops = {path.split("/")[0] for path in files}
    formulas = {"cabify", "common", "consul", "docker", "firewall", "haproxy", "keepalived", "registry"}
    allowed = {"_beacons", "_modules", "_states", "_utils"} | formulas
    assert tops <= allowed | {"lib", "orch", "reactor", "top.sls"}, sorted(tops - allowed)
