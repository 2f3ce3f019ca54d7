"""
The Cabify App stand-in: a small stateless HTTP service, one replica per container.

GET /            200 {"version", "instance", ...}    (500 with FAULT=http500)
GET /health      200 while serving, 503 once draining (or always with FAULT=unhealthy)
GET /sleep/<s>   200 after <s> seconds (at most 600): a slow request, for drain tests
GET /status      200 {"in_flight", "idle_for", "draining"}: requests being served now,
                 and seconds since the last one ended (0 while one is in flight)

SIGTERM starts a drain: /health turns 503 so that HAProxy and Consul stop sending new
work, requests keep being served (new ones too), and the process exits 0 as soon as no
request is in flight, at most DRAIN_TIMEOUT seconds after the signal.

Environment: APP_VERSION, INSTANCE (defaults to the hostname), PORT (8080),
DRAIN_TIMEOUT (5), FAULT (http500 | unhealthy | crash | slow), FAULT_DELAY (seconds, 0.5),
CRASH_AFTER (seconds, 3).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

VERSION = os.environ.get("APP_VERSION", "0")
INSTANCE = os.environ.get("INSTANCE") or socket.gethostname()
PORT = int(os.environ.get("PORT", "8080"))
DRAIN_TIMEOUT = float(os.environ.get("DRAIN_TIMEOUT", "5"))
FAULT = os.environ.get("FAULT", "")
FAULT_DELAY = float(os.environ.get("FAULT_DELAY", "0.5"))
CRASH_AFTER = float(os.environ.get("CRASH_AFTER", "3"))

draining = threading.Event()


class InFlight:
    """Requests being served now; the drain waits for this to reach zero."""

    def __init__(self) -> None:
        self.count = 0
        self.last = time.monotonic()
        self.idle = threading.Condition()

    def __enter__(self) -> None:
        with self.idle:
            self.count += 1

    def __exit__(self, *exc) -> None:
        with self.idle:
            self.count -= 1
            self.last = time.monotonic()
            self.idle.notify_all()

    def idle_for(self) -> float:
        """Seconds since the last request ended; 0 while one is in flight."""
        with self.idle:
            return 0.0 if self.count else round(time.monotonic() - self.last, 3)

    def wait_idle(self, timeout: float) -> bool:
        with self.idle:
            return self.idle.wait_for(lambda: self.count == 0, timeout)


in_flight = InFlight()


def log(message: str) -> None:
    print(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {INSTANCE} v{VERSION}: {message}", flush=True)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    server_version = "cabify-app"

    def setup(self) -> None:
        super().setup()
        # Headers and body go out as one segment; without this, Nagle and delayed ACKs
        # add about 40 ms to every keep-alive request.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _send(self, status: int, payload: dict) -> None:
        body = json.dumps(payload).encode() + b"\n"
        head = (
            f"HTTP/1.1 {status} {self.responses[status][0]}\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n"
            f"X-Instance: {INSTANCE}\r\nX-Version: {VERSION}\r\n"
            "\r\n"
        ).encode()
        self.wfile.write(head + body)
        self.log_request(status)

    def do_GET(self) -> None:
        if self.path == "/health":
            healthy = not draining.is_set() and FAULT != "unhealthy"
            self._send(200 if healthy else 503, {"status": "ok" if healthy else "draining"})
            return
        if self.path == "/status":
            status = {"in_flight": in_flight.count, "idle_for": in_flight.idle_for()}
            self._send(200, {**status, "draining": draining.is_set()})
            return
        with in_flight:
            if self.path.startswith("/sleep/"):
                try:
                    time.sleep(min(600.0, max(0.0, float(self.path.split("/")[2]))))
                except ValueError:
                    self._send(400, {"error": "GET /sleep/<seconds>"})
                    return
            elif FAULT == "slow":
                time.sleep(FAULT_DELAY)
            status = 500 if FAULT == "http500" else 200
            self._send(status, {"version": VERSION, "instance": INSTANCE, "path": self.path})

    def log_message(self, fmt: str, *args) -> None:
        pass


def main() -> int:
    server = ThreadingHTTPServer(("0.0.0.0", PORT), Handler)  # noqa: S104 - inside a container
    server.daemon_threads = True

    def finish_drain() -> None:
        idle = in_flight.wait_idle(DRAIN_TIMEOUT)
        log(
            "idle, exiting"
            if idle
            else f"drain_timeout {DRAIN_TIMEOUT}s reached with {in_flight.count} in flight"
        )
        server.shutdown()

    def drain(signum, frame) -> None:
        if draining.is_set():
            return
        draining.set()
        log(f"SIGTERM: draining ({in_flight.count} in flight, at most {DRAIN_TIMEOUT}s)")
        threading.Thread(target=finish_drain, daemon=True).start()

    signal.signal(signal.SIGTERM, drain)
    signal.signal(signal.SIGINT, drain)
    if FAULT == "crash":
        threading.Timer(CRASH_AFTER, lambda: os._exit(3)).start()
    log(f"serving on :{PORT}" + (f" with FAULT={FAULT}" if FAULT else ""))
    server.serve_forever(poll_interval=0.05)
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
