"""
Test harness: a real salt-master and salt-minion (pytest-salt-factories) serving this
repository's file and pillar roots, applying the formulas to this very host.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import pathlib
import subprocess
import time
from typing import Any, ClassVar

import pytest
import salt.client
import salt.config
import yaml

from tests.helpers import forget_releases, pool_settled, wait_for

REPO = pathlib.Path(__file__).resolve().parent.parent
log = logging.getLogger(__name__)


def _master_config() -> dict:
    """The master settings `make up` installs (conf/master.yaml), for this checkout."""
    text = (REPO / "conf" / "master.yaml").read_text().replace("@REPO@", str(REPO))
    text = text.replace("@MINION_ID@", "cabify-minion")
    return yaml.safe_load(text)


@pytest.fixture(scope="session")
def salt_master(salt_factories):
    overrides = _master_config()
    for key in ("auto_accept", "open_mode"):  # salt-factories accepts its own minion's key
        overrides.pop(key, None)
    # The fleet tier's hosts (containers on their own network) reach it on the machine's
    # address there, on Salt's usual ports (the ones the firewall opens on a master;
    # `make test` stops the daemons of `make up` first).
    overrides["interface"] = "0.0.0.0"  # noqa: S104
    overrides |= {"publish_port": 4505, "ret_port": 4506}
    for port in (4505, 4506):
        held = subprocess.run(
            ["ss", "-Htlnp", f"sport = :{port}"], capture_output=True, text=True, check=False
        )
        assert not held.stdout.strip(), (
            f"port {port} is taken (by the salt-master of `make up`, or of a killed run?): {held.stdout}"
        )
    factory = salt_factories.salt_master_daemon("cabify-master", overrides=overrides)
    with factory.started(start_timeout=120):
        yield factory


@pytest.fixture(scope="session")
def salt_minion(salt_master):
    # The all-in-one host's roles, as `make up` gives them.
    minion_conf = (REPO / "conf" / "minion.yaml").read_text().replace("@MINION_ID@", "cabify-minion")
    overrides = {"grains": yaml.safe_load(minion_conf)["grains"]}
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


@dataclasses.dataclass
class JobResult:
    """What a CLI run gives the tests: the return code, the function's return, and text
    for failure messages."""

    returncode: int
    data: Any
    stdout: str = ""
    stderr: str = ""


class MinionCli:
    """`salt <minion> FUN ARGS...` as an operator runs it on the master: the job is
    published by the test master and run by the minion daemon, and its return read off
    the master's event bus in this process. Half a second quicker a call than starting
    a salt-call process, and safe to use from several threads at once (one LocalClient
    a call)."""

    def __init__(self, master_config_file: str, minion_id: str):
        self._opts = salt.config.client_config(master_config_file)
        self._minion = minion_id

    def run(self, fun: str, *args, **kwargs) -> JobResult:
        client = salt.client.LocalClient(mopts=copy.deepcopy(self._opts))
        try:
            published = client.run_job(self._minion, fun, list(args), kwarg=kwargs or None, listen=True)
            if not published:
                return JobResult(1, None, stderr=f"{fun}: could not publish the job to {self._minion}")
            # Every 10 s without a return the master asks the minion (saltutil.find_job)
            # whether the job still runs: a job whose process died ends the wait.
            found = {}
            for returned in client.get_iter_returns(
                published["jid"], published["minions"], timeout=10, gather_job_timeout=15
            ):
                found.update(returned or {})
        finally:
            client.destroy()
        if self._minion not in found:
            return JobResult(1, None, stderr=f"{fun}: {self._minion}'s job ended without a return")
        ret = found[self._minion]
        returncode = ret.get("retcode") or 0
        return JobResult(returncode, ret.get("ret"), stderr="" if returncode == 0 else str(ret.get("ret")))


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
def salt_cli(salt_master, salt_minion):
    """Module and state calls on the minion from the master (`salt <minion> ...`)."""
    return TimedCli(MinionCli(salt_master.config_file, salt_minion.id))


@pytest.fixture(scope="session")
def salt_run_cli(salt_master):
    return TimedCli(salt_master.salt_run_cli(timeout=300))


@pytest.fixture(scope="session")
def highstate(salt_call_cli):
    """The host converged once with the repository's top file and pillar (a pool that a
    former run left at another version goes back to the pillar's in one batch)."""
    ret = salt_call_cli.run("saltutil.sync_all")
    assert ret.returncode == 0, ret.stderr
    # A former run's release must not be this one's pillar. On a host that has just
    # booted, Consul is down until the highstate starts it: start it first.
    if not forget_releases():
        ret = salt_call_cli.run("state.sls", "common,consul")
        assert ret.returncode == 0, f"Consul's formula failed: {ret.stdout[-2000:]}"
        wait_for(forget_releases, 60, "Consul answering after its formula")
    quick = {"cabify": {"pool": {"release": {"max_parallel": 3, "min_healthy_time": 0}}}}
    ret = salt_call_cli.run("state.apply", pillar=quick)
    failed = {k: v["comment"] for k, v in (ret.data or {}).items() if not v["result"]}
    assert ret.returncode == 0 and not failed, f"highstate failed: {failed or ret.stderr}"
    slowest = sorted(ret.data.values(), key=lambda s: -s.get("duration", 0))[:5]
    log.info("highstate: slowest states %s", [(s["name"], round(s["duration"])) for s in slowest])
    # A converged host serves: every pool of the pillar is at its count, registered and
    # UP (a replica left unhealthy by a former run is replaced by the heal first).
    pools = yaml.safe_load((REPO / "pillar" / "stack.sls").read_text())["cabify"]["pools"]
    for pool, settings in pools.items():
        wait_for(
            lambda pool=pool, count=settings["replicas"]: pool_settled(count, pool),
            60,
            f"pool {pool}: {settings['replicas']} replicas running, registered and UP after the highstate",
        )
    return ret.data
