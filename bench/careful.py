"""
The baseline of the rolling benchmark: a careful rolling release done by hand, with
nothing of this project's code. For each replica: surge (start a new container and
register it in Consul with its health check), wait until HAProxy has it UP, drain the
old one in HAProxy, deregister it, wait until HAProxy shows 0 sessions on it, stop it.

It works on replicas of its own (label cabify.careful, Consul meta pool "careful"), so
that this project's beacons leave them alone, in Consul service POOL: HAProxy's backend
of that pool serves them. The pool's own replicas are scaled to 0 first and back after
(rolling.py does that). Prints JSON: the release's wall time and per replica.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.request

CONSUL = "http://127.0.0.1:8500"
SOCKET = "/run/haproxy/admin.sock"
# Consul's ACLs (README "Security"): the bench registers and deregisters its stand-ins
# as an operator on the master would, with the management token the master keeps.
ACL_SECRETS = "/etc/cabify/consul-acl.json"


def token() -> str:
    with open(ACL_SECRETS, encoding="utf-8") as handle:
        return json.load(handle)["management"]["127.0.0.1:8500"]["SecretID"]


def consul(method: str, path: str, body=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(  # noqa: S310 - loopback
        CONSUL + path, data=data, method=method, headers={"X-Consul-Token": token()}
    )
    with urllib.request.urlopen(req, timeout=5) as resp:  # noqa: S310
        return resp.read()


def haproxy(command: str) -> str:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(SOCKET)
        sock.sendall(command.encode() + b"\n")
        return b"".join(iter(lambda: sock.recv(65536), b"")).decode()


def server(pool: str, address: str) -> dict | None:
    lines = haproxy("show stat").splitlines()
    header = lines[0].lstrip("# ").split(",")
    for line in lines[1:]:
        row = dict(zip(header, line.split(","), strict=False))
        if row.get("pxname") == pool and row.get("addr") == f"{address}:8080":
            return row
    return None


def start(pool: str, version: str, drain_timeout: int) -> tuple[str, str]:
    env = ["-e", f"APP_VERSION={version}", "-e", f"DRAIN_TIMEOUT={drain_timeout}"]
    run = ["docker", "run", "-d", "--network", pool, "--label", "cabify.careful=1"]
    name = subprocess.run(
        [*run, *env, f"cabify-app:{version}"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()[:12]  # fmt: skip
    address = subprocess.run(
        ["docker", "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", name],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    consul(
        "PUT",
        "/v1/agent/service/register",
        {
            "ID": f"careful-{name}",
            "Name": pool,
            "Tags": ["stable"],
            "Address": address,
            "Port": 8080,
            "Meta": {"pool": "careful", "version": version},
            "Check": {"HTTP": f"http://{address}:8080/health", "Interval": "1s", "Timeout": "1s"},
        },
    )
    return name, address


def wait(what, timeout: float = 60, step: float = 0.1, must: bool = True):
    """Poll WHAT until it is true; after TIMEOUT, stop the script (MUST) or go on."""
    deadline = time.monotonic() + timeout
    while not (found := what()):
        if time.monotonic() > deadline:
            if must:
                raise SystemExit(f"careful: timed out waiting for {what.__doc__ or what}")
            return found
        time.sleep(step)
    return found


def stop(pool: str, name: str, address: str, drain_timeout: int) -> None:
    slot = server(pool, address)
    if slot:
        haproxy(f"set server {pool}/{slot['svname']} state drain")
    consul("PUT", f"/v1/agent/service/deregister/careful-{name}")
    # 0 sessions, or drain_timeout reached: then the app's own drain finishes them.
    wait(
        lambda: (row := server(pool, address)) is None or int(row["scur"] or 0) == 0,
        drain_timeout,
        must=False,
    )
    subprocess.run(["docker", "stop", "-t", str(drain_timeout + 2), name], capture_output=True, check=True)
    subprocess.run(["docker", "rm", "-f", name], capture_output=True, check=True)
    if slot:
        haproxy(f"set server {pool}/{slot['svname']} state ready")


def up(pool: str, address: str) -> bool:
    """UP in HAProxy (``UP``, or ``UP 1/2`` when it has just risen); a slot that an
    earlier drain left in drain is put back to ready (HAProxy keeps a slot's admin state
    when DNS gives it a new address)."""
    row = server(pool, address)
    if row and row["status"] == "DRAIN":
        haproxy(f"set server {pool}/{row['svname']} state ready")
    return bool(row and (row["status"] == "UP" or row["status"].startswith("UP ")))


def remove_leftovers() -> None:
    """What a former run that was stopped half-way left: its containers and registrations."""
    names = subprocess.run(
        ["docker", "ps", "-aq", "--filter", "label=cabify.careful=1"],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    if names:
        subprocess.run(["docker", "rm", "-f", *names], capture_output=True, check=True)
    for service_id in json.loads(consul("GET", "/v1/agent/services")):
        if service_id.startswith("careful-"):
            consul("PUT", f"/v1/agent/service/deregister/{service_id}")


def main() -> None:
    import argparse  # noqa: PLC0415

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["setup", "release", "teardown"])
    parser.add_argument("--pool", default="cabify")
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--version", default="bench-1")
    parser.add_argument("--to-version", default="bench-2")
    parser.add_argument("--drain-timeout", type=int, default=5)
    parser.add_argument("--state", default="/tmp/careful.json")  # noqa: S108 - the bench's own scratch file
    args = parser.parse_args()
    if args.command == "setup":
        remove_leftovers()
        replicas = [start(args.pool, args.version, args.drain_timeout) for _ in range(args.replicas)]
        for _, address in replicas:
            wait(lambda address=address: up(args.pool, address))
        json.dump(replicas, open(args.state, "w"))  # noqa: SIM115
        return
    replicas = [tuple(r) for r in json.load(open(args.state))]  # noqa: SIM115
    if args.command == "teardown":
        for name, address in replicas:
            stop(args.pool, name, address, 0)
        return
    started, per_replica, new = time.monotonic(), [], []
    for old_name, old_address in replicas:
        at = time.monotonic()
        name, address = start(args.pool, args.to_version, args.drain_timeout)
        wait(lambda address=address: up(args.pool, address))
        surged = time.monotonic()
        stop(args.pool, old_name, old_address, args.drain_timeout)
        per_replica.append({"surge": round(surged - at, 2), "drain": round(time.monotonic() - surged, 2)})
        new.append((name, address))
    json.dump(new, open(args.state, "w"))  # noqa: SIM115
    print(json.dumps({"release_wall_s": round(time.monotonic() - started, 2), "per_replica": per_replica}))


if __name__ == "__main__":
    main()
