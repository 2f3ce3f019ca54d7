"""
Traffic shares as HAProxy server weights, and the Consul weights that carry them.

HAProxy takes each server's weight from its SRV record: weight = ceil(SRV weight / 256),
in 1..256. Consul fills the SRV weight from the instance's ``Weights.Passing``, a 16-bit
number (at most 65535). A share of requests for the new version of a pool is therefore a
pair of per-replica weights, one for the new replicas and one for the others, each in
1..256, and the share asked for is only approached when the replica counts make it
unreachable (99 % with 3 old replicas and 1 new one gives 98.84 %).

Pure computation: no service is asked anything.
"""

from __future__ import annotations

HAPROXY_WEIGHT_MAX = 256
CONSUL_WEIGHT_MAX = 65535


def check_share(share: float) -> float:
    """SHARE as a float, or ValueError when it is not a percentage strictly between 0 and 100."""
    if isinstance(share, bool):
        raise ValueError(f"must be a percentage above 0 and below 100 (got {share!r})")
    try:
        value = float(share)
    except (TypeError, ValueError):
        raise ValueError(f"must be a percentage above 0 and below 100 (got {share!r})") from None
    if not 0 < value < 100:
        raise ValueError(f"must be a percentage above 0 and below 100 (got {share!r})")
    return value


def consul_passing(haproxy_weight: int) -> int:
    """The ``Weights.Passing`` that gives a server HAPROXY_WEIGHT (1..256) in HAProxy."""
    weight = int(haproxy_weight)
    if not 1 <= weight <= HAPROXY_WEIGHT_MAX:
        raise ValueError(f"HAProxy weight must be from 1 to {HAPROXY_WEIGHT_MAX} (got {haproxy_weight!r})")
    return min(256 * weight, CONSUL_WEIGHT_MAX)


def haproxy_weight(passing: int) -> int:
    """The HAProxy weight a SRV weight of PASSING gives (what HAProxy computes)."""
    return max(0, min(HAPROXY_WEIGHT_MAX, (int(passing) + 255) // 256))


def share_of(new_weight: int, new: int, old_weight: int, old: int) -> float:
    """Percent of the requests that NEW replicas at NEW_WEIGHT get beside OLD at OLD_WEIGHT."""
    total = new * new_weight + old * old_weight
    return 100.0 * new * new_weight / total if total else 0.0


def split(share: float, new: int, old: int) -> dict:
    """
    Per-replica HAProxy weights that give NEW replicas SHARE percent of the requests
    beside OLD replicas: ``{"new": a, "old": b, "share": given, "asked": share}``, where
    ``given`` is the share these weights give (closest reachable, within 0.05 points
    when reachable). Among equally close pairs the smallest weights win, so that a
    share that needs no skew keeps every weight at 1.
    """
    target = check_share(share)
    new, old = int(new), int(old)
    if new < 0 or old < 0:
        raise ValueError(f"replica counts cannot be negative (new {new}, old {old})")
    if new == 0 or old == 0:
        return {"new": 1, "old": 1, "share": 100.0 if old == 0 and new else 0.0, "asked": target}
    best: tuple[float, int, int] | None = None
    for old_weight in range(1, HAPROXY_WEIGHT_MAX + 1):
        ideal = target * old * old_weight / ((100 - target) * new)
        for candidate in {int(ideal), int(ideal) + 1}:
            new_weight = max(1, min(HAPROXY_WEIGHT_MAX, candidate))
            error = abs(share_of(new_weight, new, old_weight, old) - target)
            if best is None or error < best[0] - 1e-9:
                best = (error, new_weight, old_weight)
        if best[0] < 0.05:
            break
    _, new_weight, old_weight = best
    given = round(share_of(new_weight, new, old_weight, old), 2)
    return {"new": new_weight, "old": old_weight, "share": given, "asked": target}


def stored(share: float, new: int, old: int, spec: str) -> dict:
    """What a pool's weights key holds for SHARE percent of the requests to NEW replicas
    of SPEC beside OLD others: ``{"spec", "new", "old", "asked", "share"}`` (see
    :func:`split`; ValueError for a share out of range)."""
    found = split(share, new, old)
    return {"spec": spec, **{k: found[k] for k in ("new", "old", "asked", "share")}}


def reachable(share: float, new: int, old: int) -> float:
    """The share (percent) that :func:`split` gives for SHARE with these counts."""
    return split(share, new, old)["share"]
