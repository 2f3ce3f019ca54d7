"""A bounded closed-loop load client through HAProxy's frontend, for tests and benchmarks."""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field


@dataclass
class LoadResult:
    requests: int = 0
    failed: int = 0
    failures: list[str] = field(default_factory=list)
    instances: Counter = field(default_factory=Counter)
    versions: Counter = field(default_factory=Counter)


class LoadClient:
    """WORKERS threads, each on its own keep-alive connection, sending GET / until
    stopped, MAX_SECONDS have passed or MAX_REQUESTS were sent. A request fails when it
    raises or answers anything but 200."""

    def __init__(
        self, host="127.0.0.1", port=80, workers=4, max_seconds=300, max_requests=200_000, keep_samples=False
    ):
        self.host, self.port, self.workers = host, port, workers
        self.max_seconds, self.max_requests = max_seconds, max_requests
        self.result = LoadResult()
        # With KEEP_SAMPLES, one (end time, latency in seconds, version or None when
        # failed) per request, times from time.monotonic(): what a benchmark plots.
        self.samples: list[tuple[float, float, str | None]] | None = [] if keep_samples else None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def _record(self, ok: bool, detail: str, payload: dict | None, started: float) -> None:
        ended = time.monotonic()
        with self._lock:
            self.result.requests += 1
            if self.samples is not None:
                self.samples.append((ended, ended - started, (payload or {}).get("version") if ok else None))
            if not ok:
                self.result.failed += 1
                if len(self.result.failures) < 20:
                    self.result.failures.append(detail)
            elif payload:
                self.result.instances[payload.get("instance")] += 1
                self.result.versions[payload.get("version")] += 1

    def _worker(self, deadline: float) -> None:
        conn = None
        while not self._stop.is_set() and time.monotonic() < deadline:
            if self.result.requests >= self.max_requests:
                return
            started = time.monotonic()
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
                conn.request("GET", "/")
                resp = conn.getresponse()
                body = resp.read()
                ok = resp.status == 200
                self._record(
                    ok, f"HTTP {resp.status}: {body[:100]!r}", json.loads(body) if ok else None, started
                )
                if resp.getheader("Connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException, ValueError) as err:
                self._record(False, f"{type(err).__name__}: {err}", None, started)
                if conn is not None:
                    conn.close()
                conn = None
        if conn is not None:
            conn.close()

    def __enter__(self) -> LoadClient:
        deadline = time.monotonic() + self.max_seconds
        for _ in range(self.workers):
            thread = threading.Thread(target=self._worker, args=(deadline,), daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=15)

    def requests_so_far(self) -> int:
        with self._lock:
            return self.result.requests
