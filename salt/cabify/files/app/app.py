"""
The Cabify App stand-in: a small stateless HTTP service, one replica per container.

GET /        200 {"version", "instance", ...}    (500 with FAULT=http500)
GET /health  200 while serving, 503 once draining (or always with FAULT=unhealthy)

SIGTERM starts a drain: /health turns 503 so that HAProxy and Consul stop sending new
work, requests keep being served until DRAIN_TIMEOUT seconds have passed, then the
process exits 0.

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
        if FAULT == "slow":
            time.sleep(FAULT_DELAY)
        status = 500 if FAULT == "http500" else 200
        self._send(status, {"version": VERSION, "instance": INSTANCE, "path": self.path})

    def log_message(self, fmt: str, *args) -> None:
        pass


def main() -> int:
    server = ThreadingHTTPServer(("0.0.0.0", PORT), Handler)  # noqa: S104 - inside a container
    server.daemon_threads = True

    def drain(signum, frame) -> None:
        if draining.is_set():
            return
        draining.set()
        log(f"SIGTERM: draining for {DRAIN_TIMEOUT}s")
        threading.Timer(DRAIN_TIMEOUT, server.shutdown).start()

    signal.signal(signal.SIGTERM, drain)
    signal.signal(signal.SIGINT, drain)
    if FAULT == "crash":
        threading.Timer(CRASH_AFTER, lambda: os._exit(3)).start()
    log(f"serving on :{PORT}" + (f" with FAULT={FAULT}" if FAULT else ""))
    server.serve_forever(poll_interval=0.2)
    server.server_close()
    log("drained, exiting")
    return 0


if __name__ == "__main__":
    sys.exit(main())
