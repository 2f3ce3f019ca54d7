"""Hardened replicas and services: what a compromised replica could do is little (no
capability, no new privileges, a read-only root, bounded processes and memory), and
HAProxy's admin socket and stats page are reachable only by whom they are for."""

from __future__ import annotations

import grp
import json
import os
import pwd
import stat
import subprocess

import docker

from tests.helpers import HAPROXY_SOCKET, containers


def test_replicas_run_without_capabilities_on_a_read_only_root_with_limits(steady):
    for container in containers():
        host = container.attrs["HostConfig"]
        assert host["CapDrop"] == ["ALL"] and not host["CapAdd"], (container.name, host["CapDrop"])
        assert host["SecurityOpt"] == ["no-new-privileges"], (container.name, host["SecurityOpt"])
        assert host["ReadonlyRootfs"] is True and "/tmp" in host["Tmpfs"], container.name  # noqa: S108
        assert host["PidsLimit"] == 256 and host["Memory"] == 128 * 1024 * 1024, container.name
        assert container.attrs["Config"]["User"] == "nobody", container.name
        # What the process itself has: no effective capability, no write outside /tmp.
        status = container.exec_run(["cat", "/proc/1/status"]).output.decode()
        effective = next(line.split()[1] for line in status.splitlines() if line.startswith("CapEff:"))
        assert int(effective, 16) == 0, f"{container.name} runs with capabilities {effective}"
        assert "NoNewPrivs:\t1" in status, container.name
        assert container.exec_run(["touch", "/app/x"]).exit_code != 0, f"{container.name} can write its root"
        assert container.exec_run(["touch", "/tmp/x"]).exit_code == 0, (  # noqa: S108
            f"{container.name} has no writable /tmp"
        )


CONNECT = """
import socket, sys
s = socket.socket()
s.settimeout(1)
try:
    s.connect((sys.argv[1], 8080))
    print("connected")
except OSError as err:
    print(type(err).__name__)
"""


def test_dockerd_keeps_containers_through_restarts_and_replicas_cannot_reach_each_other(steady):
    """live-restore; no traffic between containers on the default bridge, nor between
    a pool's replicas on its own network (the host still reaches them)."""
    with open("/etc/docker/daemon.json", encoding="utf-8") as daemon:
        settings = json.load(daemon)
    assert settings["live-restore"] is True and settings["icc"] is False and settings["no-new-privileges"]
    assert docker.from_env().info()["LiveRestoreEnabled"] is True
    network = docker.from_env().networks.get("cabify").attrs["Options"]
    assert network.get("com.docker.network.bridge.enable_icc") == "false", network
    first, second, *_ = containers()
    address = next(iter(second.attrs["NetworkSettings"]["Networks"].values()))["IPAddress"]
    tried = first.exec_run(["python3", "-c", CONNECT, address]).output.decode().strip()
    assert tried != "connected", f"{first.name} reached {second.name} at {address}:8080"


def test_haproxys_admin_socket_is_for_root_and_the_haproxy_group_and_stats_stay_on_loopback(highstate):
    mode = os.stat(HAPROXY_SOCKET)
    assert stat.S_IMODE(mode.st_mode) == 0o660, oct(mode.st_mode)
    assert pwd.getpwuid(mode.st_uid).pw_name == "root" and grp.getgrgid(mode.st_gid).gr_name == "haproxy"
    listening = subprocess.run(
        ["ss", "-Htln", "sport", "= :8404"], capture_output=True, text=True, check=True
    )
    assert listening.stdout.split()[3] == "127.0.0.1:8404", listening.stdout
