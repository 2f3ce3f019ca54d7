"""
The canary analysis: live figures of both roles from HAProxy's counters and request
log, and the judgement of a step (pass, fail with a reason, or inconclusive).

Pure computation on what HAProxy said (its ``show stat`` CSV, read on the runtime API
by the HAProxy module or from the stats page by the release controller): no service
is asked anything.
"""

from __future__ import annotations

from typing import Any

ROLES = ("stable", "canary")

DEFAULTS = {
    "max_error_rate": 0.05,  # fraction of the canary's requests that failed (5xx, retried)
    "max_p99_ms": 500,
    "min_requests": 20,  # fewer in a step's window: inconclusive, the step waits
    "interval": 5,  # seconds between two readings of the figures
    "inconclusive_limit": 60,  # seconds an inconclusive step may wait before it aborts
}


def stat_rows(csv_text: str, backend: str) -> list[dict]:
    """The server rows of BACKEND in HAProxy's stats CSV (``show stat``, ``/stats;csv``)."""
    lines = csv_text.splitlines()
    header = lines[0].lstrip("# ").split(",") if lines else []
    rows = [dict(zip(header, line.split(","), strict=False)) for line in lines[1:] if line]
    return [r for r in rows if r.get("pxname") == backend and r.get("svname") not in ("FRONTEND", "BACKEND")]


def role_of(row: dict) -> str:
    """The role of a server row: its server-template's prefix (``stable``, ``canary``)."""
    return row["svname"].rstrip("0123456789")


def servers(rows: list[dict]) -> dict[str, dict]:
    """The servers of ROWS that have an address, by ``address:port``: slot name, role,
    state, whether it is ``up`` (``UP``, or ``UP 1/2``: up and serving, one more failed
    check from down), weight and current sessions. Where two slots hold one address (a
    slot in maintenance that HAProxy kept from its saved state, beside the one DNS
    gave), the one not in maintenance stands for it."""
    found: dict[str, dict] = {}
    for row in rows:
        if not row.get("addr"):
            continue
        server = {
            "name": row["svname"],
            "role": role_of(row),
            "state": row["status"],
            "up": row["status"] == "UP" or row["status"].startswith("UP "),
            "weight": int(row.get("uweight") or row.get("weight") or 0),
            "sessions": int(row.get("scur") or 0),
        }
        known = found.get(row["addr"])
        if known is None or (known["state"].startswith("MAINT") and not server["state"].startswith("MAINT")):
            found[row["addr"]] = server
    return found


def disagreement(found: dict[str, dict], expected: dict[str, int | None]) -> tuple[list[str], list[str]]:
    """How an LB's servers FOUND (see :func:`servers`) differ from EXPECTED, what Consul
    says must serve (``address:port`` to weight; None: any weight): expected servers
    missing or not UP, servers UP that are not expected, wrong weights. Also the slots
    that a drain left behind and that DNS gave an expected server: they are to be put
    back to ready (and count as UP here)."""
    problems: list[str] = []
    drained: list[str] = []
    for address, weight in sorted(expected.items()):
        server = found.get(address)
        if server is None:
            hint = f" (the slots hold {len(found)} servers for {len(expected)}: none free?)"
            problems.append(f"{address} missing" + (hint if len(found) >= len(expected) else ""))
            continue
        if server["state"].startswith("DRAIN"):
            drained.append(server["name"])
            server = {**server, "up": True}
        if not server["up"]:
            problems.append(f"{address} {server['state']}")
        elif weight is not None and server["weight"] != int(weight):
            problems.append(f"{address} weight {server['weight']}, not {weight}")
    for address, server in sorted(found.items()):
        if address not in expected and server["up"]:
            problems.append(f"{address} UP but not passing in Consul")
    return problems, drained


def role_counters(rows: list[dict]) -> dict[str, dict]:
    """Cumulative counters of server ROWS summed by role: requests sent to them, and
    errors (5xx answers, response errors and attempts that HAProxy retried on another
    server)."""

    def number(row: dict, key: str) -> int:
        return int(row.get(key) or 0)

    out: dict[str, dict] = {}
    for row in rows:
        answered = sum(number(row, f"hrsp_{k}") for k in ("1xx", "2xx", "3xx", "4xx", "5xx", "other"))
        failed = number(row, "wretr") + number(row, "eresp")
        totals = out.setdefault(role_of(row), {"requests": 0, "errors": 0})
        totals["requests"] += answered + failed
        totals["errors"] += number(row, "hrsp_5xx") + failed
    return out


def canaries_out(rows: list[dict]) -> list[str]:
    """The canary servers (``slot address``) of ROWS that HAProxy holds DOWN: their
    health checks failed."""
    return [
        f"{row['svname']} {row['addr']}"
        for row in rows
        if role_of(row) == "canary" and row.get("addr") and row.get("status", "").startswith("DOWN")
    ]


def defaults() -> dict:
    """The analysis settings a canary uses where it sets none."""
    return dict(DEFAULTS)


def percentile(ordered: list[float], q: float) -> float | None:
    """The Q-quantile (0..1) of the sorted list ORDERED, or None when it is empty."""
    if not ordered:
        return None
    return float(ordered[min(len(ordered) - 1, int(q * len(ordered)))])


def figures(
    counters: dict[str, dict],
    baseline: dict[str, dict] | None,
    latencies: dict[str, list[float]],
    target_share: float | None = None,
) -> dict[str, Any]:
    """
    Per-role figures since BASELINE: requests, errors, error rate, p50/p99 (ms) and,
    for the canary, the share of the requests it measured beside TARGET_SHARE.
    COUNTERS and BASELINE are cumulative ``{role: {"requests", "errors"}}``.
    """
    out: dict[str, Any] = {}
    for role in ROLES:
        now = counters.get(role, {"requests": 0, "errors": 0})
        before = (baseline or {}).get(role, {"requests": 0, "errors": 0})
        requests = max(0, now["requests"] - before["requests"])
        errors = max(0, now["errors"] - before["errors"])
        timings = sorted(latencies.get(role, []))
        out[role] = {
            "requests": requests,
            "errors": errors,
            "error_rate": round(errors / requests, 4) if requests else 0.0,
            "p50_ms": percentile(timings, 0.50),
            "p99_ms": percentile(timings, 0.99),
            "logged": len(timings),
        }
    total = out["stable"]["requests"] + out["canary"]["requests"]
    out["share"] = {
        "target": target_share,
        "measured": round(100.0 * out["canary"]["requests"] / total, 2) if total else None,
    }
    return out


def judge(numbers: dict, analysis: dict) -> str | None:
    """Why the canary's figures break a threshold of ANALYSIS, or None (too few
    requests to say is None too: see :func:`conclusive`)."""
    canary = numbers["canary"]
    if not conclusive(numbers, analysis):
        return None
    if canary["error_rate"] > analysis["max_error_rate"]:
        return (
            f"canary error rate {canary['error_rate']:.2%} over {canary['requests']} requests "
            f"is above max_error_rate {analysis['max_error_rate']:.2%}"
        )
    if canary["p99_ms"] is not None and canary["p99_ms"] > analysis["max_p99_ms"]:
        return f"canary p99 latency {canary['p99_ms']} ms is above max_p99_ms {analysis['max_p99_ms']} ms"
    return None


def conclusive(numbers: dict, analysis: dict) -> bool:
    """The canary had at least ``min_requests`` requests in the window."""
    return numbers["canary"]["requests"] >= analysis["min_requests"]
