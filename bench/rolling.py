"""
Benchmark of a rolling release under load, on a host set up by `make up`.

A closed-loop load client (keep-alive connections through HAProxy's frontend) runs
before, during and after a release of the pool from one version to the next, done the
way an operator does it: `salt-call state.apply cabify pillar=...`. The release's
progress events (`cabify/release/<id>/...`, read with `salt-run state.event`) mark its
phases. Writes, in --out (default bench/results/):

- rolling.json: the careful baseline and this project's release at min_healthy_time 0,
  --runs times each, alternating (medians and every run); one release at
  min_healthy_time 3; per release: requests, failed, latency p50/p99/max, wall time,
  time per phase
- rolling.png: requests per second and latency over time of the min_healthy_time 3
  release, coloured by the version that answered, with the release's phases marked

Run with `make bench` (which runs `make up` first), or alone:
    /opt/cabify-salt/bench-venv/bin/python bench/rolling.py --replicas 3 --workers 8
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import time

from common import (
    REPO,
    LoadClient,
    ReleaseEvents,
    load_figures,
    per_second,
    percentile,
    pool_pillar,
    rolling_phases,
    salt_call,
)


def summary(load: LoadClient, t0: float, release: tuple[float, float], events: list) -> dict:
    found_phases = rolling_phases(events, t0)
    per_phase: dict[str, float] = {}
    for item in found_phases:
        per_phase[item["phase"]] = round(per_phase.get(item["phase"], 0) + item["end"] - item["start"], 2)
    if found_phases:
        # salt-call's own share: start, sync, pillar, image check, lock; then reconcile, record.
        per_phase["prepare"] = round(found_phases[0]["start"] - (release[0] - t0), 2)
        per_phase["finish"] = round((release[1] - t0) - found_phases[-1]["end"], 2)
    return {
        **load_figures(load),
        "release_wall_s": round(release[1] - release[0], 2),
        "release_window_s": [round(release[0] - t0, 2), round(release[1] - t0, 2)],
        "time_per_phase_s": per_phase,
        "phases": found_phases,
    }


def plot(load: LoadClient, t0: float, result: dict, path: pathlib.Path, title: str) -> None:
    import matplotlib  # noqa: PLC0415 - only the plot needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    versions = sorted({v for _, _, v in load.samples if v is not None})
    colours = dict(zip(versions, ["tab:blue", "tab:orange", "tab:green", "tab:purple"], strict=False))
    end = max((t - t0 for t, _, _ in load.samples), default=1)
    seconds = int(end) + 1
    fig, (rps_ax, lat_ax) = plt.subplots(2, 1, figsize=(11, 6.5), sharex=True)
    bottom = [0] * seconds
    for version in [*versions, None]:
        counts = per_second(load.samples, t0, seconds, version)
        if not any(counts):
            continue
        label = f"version {version}" if version else "failed"
        colour = colours.get(version, "tab:red")
        rps_ax.bar(range(seconds), counts, bottom=bottom, width=1.0, align="edge", color=colour, label=label)
        bottom = [b + c for b, c in zip(bottom, counts, strict=True)]
    rps_ax.set_ylabel("requests per second")
    rps_ax.legend(loc="lower left")
    for version in versions:
        points = [(t - t0, lat * 1000) for t, lat, v in load.samples if v == version]
        lat_ax.scatter(
            *zip(*points, strict=True), s=2, alpha=0.3, color=colours[version], label=f"version {version}"
        )
    lat_ax.set_yscale("log")
    lat_ax.set_ylabel("latency (ms)")
    lat_ax.set_xlabel("seconds")
    for ax in (rps_ax, lat_ax):
        ax.axvline(result["release_window_s"][0], color="black", linestyle="--", linewidth=1)
        ax.axvline(result["release_window_s"][1], color="black", linestyle="--", linewidth=1)
        for item in result["phases"]:
            ax.axvspan(
                item["start"], item["end"], alpha=0.12, color="green" if item["phase"] == "surge" else "grey"
            )
    rps_ax.set_title(
        f"{title}: {result['requests']} requests, {result['failed']} failed, "
        f"p99 {result['latency_ms']['p99']} ms, release {result['release_wall_s']} s "
        "(green: surge, grey: drain)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def careful_baseline(args, settle: float) -> dict:
    """The hand-made careful rolling (bench/careful.py) under the same load, on replicas
    of its own: the pool's are scaled to 0 first and back after."""
    careful = [sys.executable, str(REPO / "bench" / "careful.py")]
    common = [
        "--replicas",
        str(args.replicas),
        "--version",
        args.from_version,
        "--to-version",
        args.to_version,
    ]
    print("bench: baseline, a careful rolling release by hand (bench/careful.py)", flush=True)
    salt_call("state.apply", "cabify", f"pillar={pool_pillar(args.from_version, 0)}")
    subprocess.run([*careful, "setup", *common], check=True)
    with LoadClient(workers=args.workers, max_seconds=900, keep_samples=True) as load:
        time.sleep(settle)
        done = subprocess.run([*careful, "release", *common], check=True, capture_output=True, text=True)
        time.sleep(settle)
    subprocess.run([*careful, "teardown", *common], check=True)
    baseline = json.loads(done.stdout)
    latencies = [lat for _, lat, _ in load.samples]
    return {
        **baseline,
        "requests": load.result.requests,
        "failed": load.result.failed,
        "latency_ms": {
            "p50": round(percentile(latencies, 0.5) * 1000, 2),
            "p99": round(percentile(latencies, 0.99) * 1000, 2),
        },
    }


def release_under_load(args, min_healthy_time: float, settle: float) -> tuple[dict, LoadClient, float]:
    """This project's rolling release (state.apply) under load."""
    quick = {"max_parallel": 3, "min_healthy_time": 0}
    salt_call(
        "state.apply", "cabify", f"pillar={pool_pillar(args.from_version, args.replicas, release=quick)}"
    )
    events = ReleaseEvents()
    with LoadClient(workers=args.workers, max_seconds=900, keep_samples=True) as load:
        t0 = time.monotonic()
        time.sleep(settle)  # load before the release: the baseline of the plot
        to = f"{args.from_version} -> {args.to_version}"
        print(f"bench: releasing {to} under load, min_healthy_time {min_healthy_time}", flush=True)
        started = time.monotonic()
        release = {"max_parallel": args.max_parallel, "min_healthy_time": min_healthy_time}
        salt_call(
            "state.apply", "cabify", f"pillar={pool_pillar(args.to_version, args.replicas, release=release)}"
        )
        ended = time.monotonic()
        time.sleep(settle)
    events.stop()
    result = summary(load, t0, (started, ended), events.events)
    result["release_s"] = release_span()
    return result, load, t0


def release_span() -> float:
    """Seconds of the pool's last release as its history record has them: from taking
    the pool's lock to the end (the release itself, without salt-call's own start-up)."""
    last = salt_call("cabify_release.history", "cabify")["local"][0]
    return round(last["ended_at"] - last["started_at"], 2)


def median_run(runs: list[dict], key: str) -> dict:
    """The run whose KEY is the median of RUNS."""
    return sorted(runs, key=lambda r: r[key])[len(runs) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--max-parallel", type=int, default=1)
    parser.add_argument("--workers", type=int, default=8, help="keep-alive connections of the load client")
    parser.add_argument(
        "--settle", type=float, default=5, help="seconds of load before and after the release"
    )
    parser.add_argument("--runs", type=int, default=3, help="runs of the baseline and of the release")
    parser.add_argument("--from-version", default="bench-1")
    parser.add_argument("--to-version", default="bench-2")
    parser.add_argument("--out", type=pathlib.Path, default=REPO / "bench" / "results")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    print(f"bench: images of {args.from_version} and {args.to_version}", flush=True)
    for version in (args.from_version, args.to_version):
        salt_call("state.apply", "cabify.install", f"pillar={pool_pillar(version, args.replicas)}")

    # The baseline and the project's release at min_healthy_time 0 in turns, RUNS times
    # each: a release's time varies by a second from run to run (Consul's first check,
    # HAProxy's resolution interval), the medians are compared.
    careful_runs, project_runs = [], []
    for run in range(1, args.runs + 1):
        print(f"bench: run {run} of {args.runs}", flush=True)
        careful_runs.append(careful_baseline(args, settle=1))
        project_runs.append(release_under_load(args, 0, settle=1)[0])
    results = {
        "careful_by_hand": median_run(careful_runs, "release_wall_s"),
        "min_healthy_time_0": median_run(project_runs, "release_s"),
        "runs": {
            "careful_by_hand_s": [r["release_wall_s"] for r in careful_runs],
            "min_healthy_time_0_release_s": [r["release_s"] for r in project_runs],
            "min_healthy_time_0_state_apply_s": [r["release_wall_s"] for r in project_runs],
            "failed": sum(r["failed"] for r in careful_runs + project_runs),
        },
    }
    result, load, t0 = release_under_load(args, 3, settle=args.settle)
    results["min_healthy_time_3"] = result
    plot(load, t0, result, args.out / "rolling.png", f"rolling {args.from_version} -> {args.to_version}")
    results["settings"] = vars(args) | {"out": str(args.out)}
    (args.out / "rolling.json").write_text(json.dumps(results, indent=2) + "\n")
    brief = {
        k: {kk: vv for kk, vv in v.items() if kk not in ("phases", "failures")}
        for k, v in results.items()
        if k != "settings"
    }
    print(json.dumps(brief, indent=2))

    print("bench: back to the pillar's own version", flush=True)
    salt_call("state.apply", "cabify")


if __name__ == "__main__":
    main()
