"""A bounded closed-loop load client through HAProxy's frontend, for tests and benchmarks.

Each worker is a thread on its own keep-alive connection. A worker that dies of an
error of its own (not a failed request) is recorded, never lost silently, and
``assert_served`` fails on it. ``assert_served`` is the one check every test makes of a
load: no failed request, and requests flowed the whole time (a minimum rate, and no
worker idle for longer than ``max_idle`` seconds).

Like browsers, curl, Go's and Java's HTTP clients, a worker sends a GET again, once,
on a new connection when the kept-alive connection it reused was closed before a single
byte of the answer came (RFC 9112, 9.3.1: a server may close an idle connection at
any time, and the client's next request can cross that close; HAProxy does it to the
idle connections of an old process at every reload). Such requests are counted in
``retried`` with the reason, never hidden; anything else (no answer on a new
connection, a reset mid-answer, a timeout, a status other than 200) is a failure.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field


@dataclass
class LoadResult:
    requests: int = 0
    failed: int = 0
    failures: list[str] = field(default_factory=list)
    instances: Counter = field(default_factory=Counter)
    versions: Counter = field(default_factory=Counter)
    # The longest time any worker went without completing a request, and when.
    max_idle: float = 0.0
    max_idle_at: float = 0.0
    crashed: list[str] = field(default_factory=list)
    seconds: float = 0.0
    # Requests sent again because their reused connection closed before any answer.
    retried: int = 0
    retries: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


class LoadClient:
    """WORKERS threads sending GET PATH until stopped, MAX_SECONDS have passed or
    MAX_REQUESTS were sent. A request fails when it raises (TIMEOUT seconds without an
    answer included) or answers anything but 200."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 80,
        workers: int = 4,
        max_seconds: float = 300,
        max_requests: int = 10_000_000,
        timeout: float = 10,
        path: str = "/",
        keep_samples: bool = False,
    ):
        self.host, self.port, self.workers, self.path = host, port, workers, path
        self.max_seconds, self.max_requests, self.timeout = max_seconds, max_requests, timeout
        self.result = LoadResult()
        # With KEEP_SAMPLES, one (end time, latency in seconds, version or None when
        # failed) per request, times from time.monotonic(): what a benchmark plots.
        self.samples: list[tuple[float, float, str | None]] | None = [] if keep_samples else None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._started = 0.0

    def _record(self, ok: bool, detail: str, payload: dict | None, started: float) -> float:
        ended = time.monotonic()
        with self._lock:
            self.result.requests += 1
            if self.samples is not None:
                self.samples.append((ended, ended - started, (payload or {}).get("version") if ok else None))
            if not ok:
                self.result.failed += 1
                if len(self.result.failures) < 20:
                    self.result.failures.append(f"{ended - self._started:.1f}s: {detail}")
            elif payload:
                self.result.instances[payload.get("instance")] += 1
                self.result.versions[payload.get("version")] += 1
        return ended

    def _idle(self, since: float, now: float) -> None:
        with self._lock:
            if now - since > self.result.max_idle:
                self.result.max_idle, self.result.max_idle_at = now - since, since - self._started

    def _retried(self, started: float, err: Exception) -> None:
        with self._lock:
            self.result.retried += 1
            if len(self.result.retries) < 20:
                self.result.retries.append(f"{started - self._started:.1f}s: {type(err).__name__}: {err}")

    def _exchange(self, conn: http.client.HTTPConnection) -> tuple[int, bytes, bool]:
        """One GET on CONN: status, body, and whether the server closes after it."""
        conn.request("GET", self.path)
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, body, resp.getheader("Connection", "").lower() == "close"

    def _worker(self, deadline: float) -> None:
        conn = None
        reused = False
        last = time.monotonic()
        try:
            while not self._stop.is_set() and time.monotonic() < deadline:
                if self.result.requests >= self.max_requests:
                    break
                started = time.monotonic()
                try:
                    if conn is None:
                        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
                        reused = False
                    try:
                        status, body, closing = self._exchange(conn)
                    except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as err:
                        if not reused:
                            raise
                        # The kept-alive connection was closed before any answer: once
                        # more on a new one (RFC 9112, 9.3.1).
                        self._retried(started, err)
                        conn.close()
                        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
                        status, body, closing = self._exchange(conn)
                    reused = True
                    ok = status == 200
                    payload = json.loads(body) if ok else None
                    ended = self._record(ok, f"HTTP {status}: {body[:100]!r}", payload, started)
                    if closing:
                        conn.close()
                        conn = None
                except (OSError, http.client.HTTPException, ValueError) as err:
                    ended = self._record(False, f"{type(err).__name__}: {err}", None, started)
                    if conn is not None:
                        conn.close()
                    conn = None
                self._idle(last, ended)
                last = ended
            self._idle(last, time.monotonic())
        except BaseException:  # noqa: BLE001 - a worker never dies silently
            with self._lock:
                self.result.crashed.append(traceback.format_exc())
        finally:
            if conn is not None:
                conn.close()

    def __enter__(self) -> LoadClient:
        self._started = time.monotonic()
        deadline = self._started + self.max_seconds
        for number in range(self.workers):
            thread = threading.Thread(
                target=self._worker, args=(deadline,), name=f"load-{number}", daemon=True
            )
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self.timeout + 5)
            if thread.is_alive():
                self.result.crashed.append(f"{thread.name} did not stop within {self.timeout + 5}s")
        self.result.seconds = time.monotonic() - self._started

    def requests_so_far(self) -> int:
        with self._lock:
            return self.result.requests

    def assert_served(self, min_rate: float = 20, max_idle: float = 2.0) -> None:
        """No failed request, no worker that died, and requests flowed the whole time:
        at least MIN_RATE requests a second, no worker idle for more than MAX_IDLE s."""
        result = self.result
        assert not result.crashed, f"load workers died: {result.crashed}"
        assert result.failed == 0, f"{result.failed} of {result.requests} requests failed: {result.failures}"
        assert result.rate >= min_rate, (
            f"requests did not flow: {result.requests} in {result.seconds:.1f}s "
            f"({result.rate:.1f}/s, expected at least {min_rate}/s)"
        )
        assert result.max_idle <= max_idle, (
            f"a load worker waited {result.max_idle:.2f}s for an answer "
            f"(at {result.max_idle_at:.1f}s into the load; at most {max_idle}s allowed)"
        )
