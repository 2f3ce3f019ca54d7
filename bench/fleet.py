"""
Benchmark of a fleet rolling release by the release controller, on the fleet of
`make fleet`.

A closed-loop load client runs through each LB (8 keep-alive connections each) before,
during and after a release of pool cabify over every app host at max_parallel 1 and
min_healthy_time 0, asked the way an operator asks it: `salt-run cabify.release`. The
release's record gives its phases (prepare, plan, batches, last drain, finish), each
batch's start-to-UP (new replicas started until every LB has them UP) and each drain.
The goal it is held to (issue 13): the release takes at most 1.2 x the sum of the
batches' start-to-UP, plus one drain. Writes, in --out (default bench/results/):

- fleet.json: per release (there and back, --runs times): requests and failures
  through each LB, latency p50/p99, wall time, phases, start-to-UP per batch, drains,
  and the goal met or not;
- fleet.png: per LB, requests per second by the version that answered, and latency,
  during the first release, with its batches marked.

Run with `make bench` (which runs `make fleet` first), or alone:
    /opt/cabify-salt/bench-venv/bin/python bench/fleet.py
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import subprocess
import sys
import time
import urllib.parse

from common import REPO, LoadClient, load_figures, per_second


def salt_run(*args: str) -> dict:
    """salt-run with JSON output; exits naming the command when it fails."""
    cmd = ["salt-run", "--out=json", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(
            f"bench: {' '.join(cmd)} failed ({done.returncode}):\n{done.stdout[-3000:]}{done.stderr[-2000:]}"
        )
    return json.loads(done.stdout or "{}")


def lb_addresses() -> dict[str, str]:
    """Each LB of the fleet (``G@roles:lb``) and its fleet address (its stats page's)."""
    cmd = ["salt", "-C", "G@roles:lb", "cabify_lb.stats_url", "--out=json", "--static"]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    urls = json.loads(done.stdout or "{}")
    found = {lb: urllib.parse.urlsplit(url).hostname for lb, url in urls.items() if isinstance(url, str)}
    found = {lb: host for lb, host in found.items() if host and not host.startswith("127.")}
    if not found:
        sys.exit("bench: no LB of a fleet answers (G@roles:lb, stats page on its address): run `make fleet`")
    return dict(sorted(found.items()))


def running_version() -> str:
    """The one version every app host runs (the bench starts from a whole pool)."""
    hosts = salt_run("cabify.hosts", "cabify")
    versions = {v for found in hosts.values() if isinstance(found, dict) for v in found.get("cabify", {})}
    if len(versions) != 1:
        sys.exit(
            f"bench: the fleet's pool cabify runs {sorted(versions) or 'nothing'}: run `make fleet` first"
        )
    return versions.pop()


def release(version: str, settle: float) -> tuple[dict, dict[str, LoadClient], float]:
    """One controller release to VERSION under load through every LB."""
    loads = {
        lb: LoadClient(host=address, workers=8, max_seconds=900, keep_samples=True)
        for lb, address in lb_addresses().items()
    }
    for load in loads.values():
        load.__enter__()
    t0 = time.monotonic()
    try:
        time.sleep(settle)
        print(
            f"bench: salt-run cabify.release cabify {version} (max_parallel 1, min_healthy_time 0)",
            flush=True,
        )
        record = salt_run(
            "cabify.release", "cabify", version, "settings={max_parallel: 1, min_healthy_time: 0}"
        )
        time.sleep(settle)
    finally:
        for load in loads.values():
            load.__exit__(None, None, None)
    if record.get("result") != "succeeded":
        sys.exit(f"bench: the release to {version} failed: {record.get('reason')}")
    ups = [b["start_to_up"] for b in record.get("batches", [])]
    drains = [d["seconds"] for d in record.get("drains", [])]
    wall = round(record["ended_at"] - record["started_at"], 2)
    goal = round(1.2 * sum(ups) + max(drains, default=0), 2)
    result = {
        "to": version,
        "release_wall_s": wall,
        "phases_s": record.get("phases", {}),
        "batches": len(ups),
        "start_to_up_s": ups,
        "sum_start_to_up_s": round(sum(ups), 2),
        "drain_s": {
            "median": round(statistics.median(drains), 2) if drains else 0,
            "max": max(drains, default=0),
        },
        "goal_s": goal,
        "goal_met": wall <= goal,
        "rolling_s": round(
            sum(record.get("phases", {}).get(k, 0) for k in ("batches", "last drain", "finish")), 2
        ),
        "lbs": {lb: load_figures(load) for lb, load in loads.items()},
        "release_window_s": [round(record["started_at"] - (time.time() - time.monotonic()) - t0, 2)],
        "record": record["id"],
    }
    result["release_window_s"].append(round(result["release_window_s"][0] + wall, 2))
    return result, loads, t0


def plot(result: dict, loads: dict[str, LoadClient], t0: float, path: pathlib.Path) -> None:
    import matplotlib  # noqa: PLC0415 - only the plot needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, axes = plt.subplots(2 * len(loads), 1, figsize=(11, 3.2 * 2 * len(loads)), sharex=True)
    colours = ["tab:blue", "tab:orange", "tab:green", "tab:purple"]
    for index, (lb, load) in enumerate(sorted(loads.items())):
        rps_ax, lat_ax = axes[2 * index], axes[2 * index + 1]
        versions = sorted({v for _, _, v in load.samples if v is not None})
        colour = dict(zip(versions, colours, strict=False))
        seconds = int(max((t - t0 for t, _, _ in load.samples), default=1)) + 1
        bottom = [0] * seconds
        for version in [*versions, None]:
            counts = per_second(load.samples, t0, seconds, version)
            if any(counts):
                rps_ax.bar(
                    range(seconds),
                    counts,
                    bottom=bottom,
                    width=1.0,
                    align="edge",
                    color=colour.get(version, "tab:red"),
                    label=f"version {version}" if version else "failed",
                )
                bottom = [b + c for b, c in zip(bottom, counts, strict=True)]
        for version in versions:
            points = [(t - t0, lat * 1000) for t, lat, v in load.samples if v == version]
            lat_ax.scatter(*zip(*points, strict=True), s=2, alpha=0.3, color=colour[version])
        numbers = result["lbs"][lb]
        rps_ax.set_title(
            f"through {lb}: {numbers['requests']} requests, {numbers['failed']} failed, "
            f"p99 {numbers['latency_ms']['p99']} ms"
        )
        rps_ax.set_ylabel("requests/s")
        rps_ax.legend(loc="lower left")
        lat_ax.set_yscale("log")
        lat_ax.set_ylabel("latency (ms)")
        for ax in (rps_ax, lat_ax):
            for edge in result["release_window_s"]:
                ax.axvline(edge, color="black", linestyle="--", linewidth=1)
    axes[-1].set_xlabel("seconds")
    fig.suptitle(
        f"fleet release to {result['to']}: {result['release_wall_s']} s for {result['batches']} batches "
        f"(sum of start-to-UP {result['sum_start_to_up_s']} s, goal {result['goal_s']} s)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--runs", type=int, default=1, help="releases there and back")
    parser.add_argument("--settle", type=float, default=5, help="seconds of load before and after")
    parser.add_argument("--to-version", default="bench-fleet-2")
    parser.add_argument("--out", type=pathlib.Path, default=REPO / "bench" / "results")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    start = running_version()
    print(f"bench: version {args.to_version} pushed to the fleet's registry (orch.build)", flush=True)
    salt_run(
        "state.orchestrate", "orch.build", f"pillar={json.dumps({'build': {'version': args.to_version}})}"
    )
    results = []
    for _ in range(args.runs):
        for version in (args.to_version, start):
            result, loads, t0 = release(version, args.settle)
            print(
                f"bench: {result['release_wall_s']} s ({result['batches']} batches, sum of start-to-UP "
                f"{result['sum_start_to_up_s']} s, goal {result['goal_s']} s: "
                f"{'met' if result['goal_met'] else 'NOT met'}); phases {result['phases_s']}",
                flush=True,
            )
            if not results:
                plot(result, loads, t0, args.out / "fleet.png")
            results.append(result)
    (args.out / "fleet.json").write_text(json.dumps({"releases": results}, indent=2) + "\n")
    print(f"bench: wrote {args.out / 'fleet.json'} and {args.out / 'fleet.png'}", flush=True)


if __name__ == "__main__":
    main()
