"""
Benchmark of canary releases under load, on a host set up by `make up`: a good canary
that goes through its steps and is promoted, and a bad one (every `/` answers 500)
that the analysis aborts. Both are done the way an operator does them,
`salt-call state.apply cabify` with `cabify:release:strategy: canary`, while a
closed-loop load client runs through HAProxy. Writes, in --out (default bench/results/):

- canary.json: per run, requests, failed, latency p50/p99, the result, and per step
  the configured weight against the share of requests the canary version answered
- canary.png: per run, the share of requests per version over time against the
  configured steps, the canary's error rate as the analysis saw it, and latency

Run with `make bench`, or alone:
    /opt/cabify-salt/bench-venv/bin/python bench/canary.py
"""

from __future__ import annotations

import argparse
import itertools
import json
import pathlib
import time

from common import REPO, LoadClient, ReleaseEvents, percentile, pool_pillar, salt_call

STEPS = [{"weight": 10, "pause": 15}, {"weight": 30, "pause": 15}, {"weight": 60, "pause": 15}]
ANALYSIS = {"interval": 2, "min_requests": 50, "max_error_rate": 0.05, "max_p99_ms": 500}


def run(name: str, version: str, env: dict, args) -> dict:
    print(f"bench: {name} canary {version} beside 3 stable replicas of {args.stable}", flush=True)
    salt_call("state.apply", "cabify.install", f"pillar={pool_pillar(version, 3)}")
    salt_call("state.apply", "cabify", f"pillar={pool_pillar(args.stable, 3)}")
    pillar = pool_pillar(
        version,
        3,
        env=env,
        release={"strategy": "canary"},
        canary={"replicas": 1, "steps": STEPS, "analysis": ANALYSIS},
    )
    events = ReleaseEvents()
    with LoadClient(workers=args.workers, max_seconds=900, max_requests=10**8, keep_samples=True) as load:
        t0 = time.monotonic()
        time.sleep(args.settle)  # load before the release: the baseline of the plot
        started = time.monotonic()
        ret = salt_call("state.apply", "cabify", f"pillar={pillar}", check=False)
        ended = time.monotonic()
        time.sleep(args.settle)
    events.stop()
    state = next((v for k, v in (ret.get("local") or {}).items() if "pool-cabify-converged" in k), {})
    return summary(name, version, load, t0, (started, ended), events.events, state)


def summary(name, version, load, t0, release, events, state) -> dict:
    marks = []  # (seconds, configured canary weight)
    promoting = None
    figures = []  # (seconds, canary error rate seen by the analysis)
    for at, tag, event in events:
        data = event.get("data", event)  # a minion's event.send arrives wrapped
        step = tag.rsplit("/", 1)[-1]
        live = data.get("state") or {}
        if step == "step":
            marks.append((at - t0, data["weight"]))
        elif step in ("aborting", "promoting"):
            marks.append((at - t0, 0 if step == "aborting" else None))
            if step == "promoting":
                promoting = at - t0
        elif step == "analysis" and live.get("figures", {}).get("canary"):
            figures.append((at - t0, live["figures"]["canary"]["error_rate"]))
    steps = []
    for index, (start, weight) in enumerate(marks):
        if weight is None or weight == 0:
            continue
        end = marks[index + 1][0] if index + 1 < len(marks) else release[1] - t0
        window = [v for t, _, v in load.samples if start + 1 <= t - t0 < end]
        share = sum(1 for v in window if v == version) / len(window) if window else None
        steps.append({"weight": weight, "start_s": round(start, 1), "end_s": round(end, 1), "share": share})
    latencies = [lat for _, lat, _ in load.samples]
    promotion = None
    if promoting is not None:
        # The new version's share, second by second, from promotion to the release's end.
        shares = []
        for second in range(int(promoting), int(release[1] - t0) + 1):
            window = [v for t, _, v in load.samples if second <= t - t0 < second + 1]
            if window:
                shares.append(round(100 * sum(1 for v in window if v == version) / len(window), 1))
        steps_back = [b - a for a, b in itertools.pairwise(shares) if b < a]
        promotion = {
            "start_s": round(promoting, 1),
            "share_per_second": shares,
            "largest_step_back": min(steps_back, default=0),
        }
    return {
        "run": name,
        "promotion": promotion,
        "version": version,
        "result": state.get("result"),
        "comment": state.get("comment"),
        "requests": load.result.requests,
        "failed": load.result.failed,
        "failures": load.result.failures,
        "latency_ms": {
            "p50": round(percentile(latencies, 0.5) * 1000, 2),
            "p99": round(percentile(latencies, 0.99) * 1000, 2),
        },
        "release_wall_s": round(release[1] - release[0], 1),
        "release_window_s": [round(release[0] - t0, 1), round(release[1] - t0, 1)],
        "steps": steps,
        "marks": marks,
        "canary_error_rate": figures,
        "_samples": load.samples,
        "_t0": t0,
    }


def plot(results: list[dict], path: pathlib.Path) -> None:
    import matplotlib  # noqa: PLC0415 - only the plot needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, axes = plt.subplots(2, len(results), figsize=(7 * len(results), 7), sharex="col", squeeze=False)
    for column, result in enumerate(results):
        share_ax, lat_ax = axes[0][column], axes[1][column]
        t0, samples = result["_t0"], result["_samples"]
        seconds = int(max((t - t0 for t, _, _ in samples), default=1)) + 1
        buckets: list[list] = [[] for _ in range(seconds)]
        for t, lat, v in samples:
            buckets[min(seconds - 1, int(t - t0))].append((lat, v))
        version = result["version"]
        new_share = [100 * sum(1 for _, v in b if v == version) / len(b) if b else 0 for b in buckets]
        share_ax.plot(range(seconds), new_share, color="tab:orange", label=f"share of version {version} (%)")
        xs, ys = [result["release_window_s"][0]], [0]
        for at, weight in result["marks"]:
            xs += [at, at]
            ys += [ys[-1], weight if weight is not None else ys[-1]]
        share_ax.plot(xs, ys, color="black", linestyle="--", label="configured canary weight (%)")
        if result["canary_error_rate"]:
            at, rate = zip(*result["canary_error_rate"], strict=True)
            rates = [100 * r for r in rate]
            share_ax.plot(at, rates, color="tab:red", marker=".", label="canary error rate (%)")
        share_ax.set_ylim(-2, 102)
        share_ax.set_ylabel("percent")
        share_ax.legend(loc="upper left", fontsize=8)
        share_ax.set_title(
            f"{result['run']} canary: {result['requests']} requests, {result['failed']} failed\n"
            f"{(result['comment'] or '')[:90]}",
            fontsize=9,
        )
        p50 = [1000 * percentile([lat for lat, _ in b], 0.5) for b in buckets]
        p99 = [1000 * percentile([lat for lat, _ in b], 0.99) for b in buckets]
        lat_ax.plot(range(seconds), p50, label="p50")
        lat_ax.plot(range(seconds), p99, label="p99")
        lat_ax.set_yscale("log")
        lat_ax.set_ylabel("latency (ms)")
        lat_ax.set_xlabel("seconds")
        lat_ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    parser.add_argument("--workers", type=int, default=8, help="keep-alive connections of the load client")
    parser.add_argument("--settle", type=float, default=5, help="seconds of load around each release")
    parser.add_argument("--stable", default="bench-1", help="the stable version")
    parser.add_argument("--out", type=pathlib.Path, default=REPO / "bench" / "results")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results = [
        run("good", "bench-canary-good", {}, args),
        run("bad", "bench-canary-bad", {"FAULT": "http500"}, args),
    ]
    plot(results, args.out / "canary.png")
    public = [{k: v for k, v in r.items() if not k.startswith("_")} for r in results]
    report = {"steps": STEPS, "analysis": ANALYSIS, "runs": public}
    (args.out / "canary.json").write_text(json.dumps(report, indent=2) + "\n")
    brief = [{k: v for k, v in r.items() if k not in ("marks", "canary_error_rate")} for r in public]
    print(json.dumps(brief, indent=2))
    print("bench: back to the pillar's own version", flush=True)
    salt_call("state.apply", "cabify")


if __name__ == "__main__":
    main()
