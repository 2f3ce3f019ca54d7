"""Small helpers shared by the tests: polling with a deadline, and the real services' APIs."""

from __future__ import annotations

import json
import socket
import time
import urllib.request
from collections.abc import Callable
from typing import Any

CONSUL = "http://127.0.0.1:8500"
HAPROXY_SOCKET = "/run/haproxy/admin.sock"
FRONTEND = "http://127.0.0.1:80"
STATS = "http://127.0.0.1:8404"


def wait_for(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    """Poll CHECK until it returns something truthy; fail saying WHAT was awaited."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except Exception as err:  # noqa: BLE001 - the service may not answer yet
            last = err
        else:
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def http(method: str, url: str, body: Any = None, timeout: float = 5) -> tuple[int, bytes]:
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)  # noqa: S310 - loopback only
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def consul(method: str, path: str, body: Any = None) -> Any:
    status, raw = http(method, CONSUL + path, body)
    assert status == 200, f"consul {method} {path}: HTTP {status} {raw[:200]!r}"
    return json.loads(raw) if raw.strip() else None


def haproxy(command: str) -> str:
    """One command on HAProxy's runtime API."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(HAPROXY_SOCKET)
        sock.sendall(command.encode() + b"\n")
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode()


def haproxy_info() -> dict[str, str]:
    return dict(line.split(": ", 1) for line in haproxy("show info").splitlines() if ": " in line)


def haproxy_servers(backend: str = "cabify") -> list[dict[str, str]]:
    """The backend's servers as rows of `show stat` (svname, status, addr, ...)."""
    lines = haproxy("show stat").splitlines()
    header = lines[0].lstrip("# ").split(",")
    rows = [dict(zip(header, line.split(","), strict=False)) for line in lines[1:] if line]
    return [r for r in rows if r["pxname"] == backend and r["svname"] not in ("FRONTEND", "BACKEND")]


def failed_states(ret_data: dict | None) -> dict[str, str]:
    return {k: v["comment"] for k, v in (ret_data or {}).items() if v["result"] is False}


def changed_states(ret_data: dict | None) -> dict[str, Any]:
    return {k: v["changes"] for k, v in (ret_data or {}).items() if v["changes"]}
