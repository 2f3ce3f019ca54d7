"""
Test harness: a real salt-master and salt-minion (pytest-salt-factories) serving this
repository's file and pillar roots, applying the formulas to this very host.
"""

from __future__ import annotations

import logging
import os
import pathlib
import time
from typing import ClassVar

import pytest
import yaml

REPO = pathlib.Path(__file__).resolve().parent.parent
log = logging.getLogger(__name__)


def _master_config() -> dict:
    """The master settings `make up` installs (conf/master.yaml), for this checkout."""
    text = (REPO / "conf" / "master.yaml").read_text().replace("@REPO@", str(REPO))
    return yaml.safe_load(text)


@pytest.fixture(scope="session")
def salt_master(salt_factories):
    overrides = _master_config()
    for key in ("auto_accept", "open_mode"):  # salt-factories accepts its own minion's key
        overrides.pop(key, None)
    factory = salt_factories.salt_master_daemon("cabify-master", overrides=overrides)
    with factory.started(start_timeout=120):
        yield factory


@pytest.fixture(scope="session")
def salt_minion(salt_master):
    overrides = {}
    if not os.path.isdir("/run/systemd/system"):
        # The same setting `make up` gives the minion on hosts without systemd.
        overrides |= yaml.safe_load((REPO / "conf" / "minion-sysvinit.yaml").read_text())
    factory = salt_master.salt_minion_daemon("cabify-minion", overrides=overrides)
    with factory.started(start_timeout=120):
        yield factory


class TimedCli:
    """A salt CLI whose runs are timed: the suite's summary says where the time went."""

    calls: ClassVar[list[tuple[str, float]]] = []

    def __init__(self, cli):
        self._cli = cli

    def run(self, *args, **kwargs):
        started = time.monotonic()
        try:
            return self._cli.run(*args, **kwargs)
        finally:
            TimedCli.calls.append((" ".join(str(a) for a in args[:1]), time.monotonic() - started))


def pytest_sessionfinish(session, exitstatus):
    # salt-factories' daemons log their own stop after pytest has closed the streams
    # its log handlers write to: no "--- Logging error ---" tracebacks after the summary.
    logging.raiseExceptions = False


def pytest_terminal_summary(terminalreporter):
    if TimedCli.calls:
        total = sum(seconds for _, seconds in TimedCli.calls)
        by_function: dict[str, list[float]] = {}
        for function, seconds in TimedCli.calls:
            by_function.setdefault(function, []).append(seconds)
        top = sorted(by_function.items(), key=lambda item: -sum(item[1]))[:8]
        terminalreporter.write_line(
            f"salt CLI runs: {len(TimedCli.calls)}, {total:.0f}s in all; by function: "
            + ", ".join(f"{name} {len(times)}x {sum(times):.0f}s" for name, times in top)
        )


@pytest.fixture(scope="session")
def salt_call_cli(salt_minion):
    return TimedCli(salt_minion.salt_call_cli(timeout=900))


@pytest.fixture(scope="session")
def salt_run_cli(salt_master):
    return TimedCli(salt_master.salt_run_cli(timeout=300))


@pytest.fixture(scope="session")
def highstate(salt_call_cli):
    """The host converged once with the repository's top file and pillar (a pool that a
    former run left at another version goes back to the pillar's in one batch)."""
    ret = salt_call_cli.run("saltutil.sync_all")
    assert ret.returncode == 0, ret.stderr
    quick = {"cabify": {"pool": {"release": {"max_parallel": 3, "min_healthy_time": 0}}}}
    ret = salt_call_cli.run("state.apply", pillar=quick)
    failed = {k: v["comment"] for k, v in (ret.data or {}).items() if not v["result"]}
    assert ret.returncode == 0 and not failed, f"highstate failed: {failed or ret.stderr}"
    slowest = sorted(ret.data.values(), key=lambda s: -s.get("duration", 0))[:5]
    log.info("highstate: slowest states %s", [(s["name"], round(s["duration"])) for s in slowest])
    return ret.data
