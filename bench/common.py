"""What the benchmarks share: salt-call with JSON output, the release's progress
events read with `salt-run state.event`, percentiles, and the repository's own load
client (tests/load.py)."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import threading
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.load import LoadClient  # noqa: E402 - the repository's own load client


def salt_call(*args: str, check: bool = True) -> dict:
    """salt-call with JSON output; with CHECK, exits with the failed states named when
    it fails."""
    cmd = ["salt-call", "--out=json", "--retcode-passthrough", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        sys.exit(
            f"bench: {' '.join(cmd)} failed ({done.returncode}):\n{done.stdout[-3000:]}{done.stderr[-2000:]}"
        )
    return json.loads(done.stdout or "{}")


def pool_pillar(version: str, replicas: int, pool: str = "cabify", **settings) -> str:
    """The `pillar=` of a salt-call that runs REPLICAS of VERSION in POOL (and any other
    setting of the pool, cabify:pools:<pool>)."""
    return json.dumps({"cabify": {"pools": {pool: {"version": version, "replicas": replicas, **settings}}}})


class ReleaseEvents:
    """Progress events of releases, each with the monotonic time it was read."""

    def __init__(self) -> None:
        self.events: list[tuple[float, str, dict]] = []
        cmd = ["salt-run", "state.event", "tagmatch=cabify/release/*", "count=-1"]
        self._proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, bufsize=1)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self._proc.stdout:
            tag, _, data = line.partition("\t")
            try:
                self.events.append((time.monotonic(), tag.strip(), json.loads(data)))
            except ValueError:
                continue

    def stop(self) -> None:
        self._proc.terminate()
        self._proc.wait(timeout=10)


def rolling_phases(events: list[tuple[float, str, dict]], t0: float) -> list[dict]:
    """Per batch: `surge` (new replicas start until they are healthy for min_healthy_time)
    and `drain` (old replicas drained and removed), from the progress events."""
    out: list[dict] = []
    opened: dict[str, float] = {}
    for at, tag, _data in events:
        step = tag.rsplit("/", 1)[-1]
        if step == "batch":
            opened = {"surge": at}
        elif step == "batch-healthy" and "surge" in opened:
            out.append({"phase": "surge", "start": opened["surge"] - t0, "end": at - t0})
            opened = {"drain": at}
        elif step == "batch-done" and "drain" in opened:
            out.append({"phase": "drain", "start": opened["drain"] - t0, "end": at - t0})
            opened = {}
    return out


def load_figures(load: LoadClient) -> dict:
    """What a load client saw: requests, failures, versions that answered, latency."""
    latencies = [lat for _, lat, _ in load.samples]
    return {
        "requests": load.result.requests,
        "failed": load.result.failed,
        "failures": load.result.failures,
        "versions": dict(load.result.versions),
        "latency_ms": {
            "p50": round(percentile(latencies, 0.50) * 1000, 2),
            "p99": round(percentile(latencies, 0.99) * 1000, 2),
            "max": round(max(latencies, default=0) * 1000, 2),
            "mean": round(sum(latencies) / len(latencies) * 1000, 2) if latencies else 0,
        },
    }


def per_second(samples: list, t0: float, seconds: int, version: str | None) -> list[int]:
    """Answers of VERSION (None: failures) in each second from T0, of SAMPLES (end time,
    latency, version): the bars of a plot."""
    counts = [0] * seconds
    for t, _, v in samples:
        if v == version:
            counts[min(seconds - 1, int(t - t0))] += 1
    return counts


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
