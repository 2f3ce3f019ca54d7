"""
What a pool must do to run what is asked: spec hashes, the plan (replicas kept, started,
removed), the batches of a rolling release, and the spec of a running replica to start
its like.

Pure computation on plain data (replica dicts, container attributes): no service is
asked anything.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from typing import Any

# Environment the pool sets on every replica itself: not part of what a user asked.
OWN_ENV = ("APP_VERSION", "INSTANCE", "PORT", "PATH", "PYTHONUNBUFFERED")


def spec_hash(version: str, env: dict | None = None, resources: dict | None = None) -> str:
    """Hash of what a replica is made of (version, env, resources): a replica whose
    spec label differs is replaced."""
    env = {str(k): str(v) for k, v in (env or {}).items()}
    resources = {str(k): str(v) for k, v in (resources or {}).items()}
    text = repr((str(version), sorted(env.items()), sorted(resources.items())))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def source_hash(source_dir: str, version: str, base_image: str) -> str:
    """Content hash of an image's build context, its version and its base image."""
    digest = hashlib.sha256(f"{version}\0{base_image}\0".encode())
    for root, dirs, files in os.walk(source_dir):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(root, name)
            digest.update(os.path.relpath(path, source_dir).encode() + b"\0")
            with open(path, "rb") as handle:
                digest.update(handle.read())
    return digest.hexdigest()[:16]


def plan(current: list[dict], wanted_spec: str, replicas: int, role: str | None = None) -> dict:
    """
    What it takes for CURRENT (replica dicts with name, spec, status, role) to hold
    exactly REPLICAS running stable replicas of WANTED_SPEC: ``{"keep", "start",
    "remove"}``. With ROLE, only the replicas of that role are considered (a canary's
    promotion leaves the canaries alone); without it, canaries are removed too.
    """
    considered = [r for r in current if role is None or r["role"] == role]
    good = [
        r["name"]
        for r in considered
        if r["spec"] == wanted_spec and r["status"] == "running" and r["role"] == "stable"
    ]
    keep = good[: max(0, int(replicas))]
    remove = [r["name"] for r in considered if r["name"] not in keep]
    return {"keep": keep, "start": int(replicas) - len(keep), "remove": remove}


def batches(to_start: int, old: list[str], max_parallel: int) -> list[dict]:
    """``{"start": n, "drain": [names]}`` per batch: MAX_PARALLEL new replicas start,
    then as many old ones drain."""
    max_parallel = max(1, int(max_parallel))
    out = []
    while to_start > 0 or old:
        starts = min(max_parallel, to_start)
        out.append({"start": starts, "drain": old[:max_parallel]})
        to_start -= starts
        old = old[max_parallel:]
    return out


def rolling_plan(current: list[dict], wanted_spec: str, replicas: int, max_parallel: int, role=None) -> dict:
    """The batches of a rolling release of CURRENT to WANTED_SPEC, and the stopped
    replicas to clear first."""
    todo = plan(current, wanted_spec, replicas, role)
    running = {r["name"] for r in current if r["status"] == "running"}
    old = [n for n in todo["remove"] if n in running]
    return {
        "keep": todo["keep"],
        "remove_stopped": [n for n in todo["remove"] if n not in running],
        "batches": batches(todo["start"], old, max_parallel),
    }


def fleet_batches(hosts: dict[str, dict], max_parallel: int, host_by_host: bool = False) -> list[list[dict]]:
    """The batches of a fleet release: each host's part (``{"start": n, "old": [names]}``,
    see ``cabify_pool.release_plan``) cut into units of one new replica and one old one
    (``{"host", "start": 0|1, "drain": [name]}``), MAX_PARALLEL units a batch counted
    fleet-wide. Units go round the hosts in turn (one host's replicas never all leave
    at once), or host after host with HOST_BY_HOST; units that only drain (a host with
    more replicas than asked) come first."""
    units: dict[str, list[dict]] = {}
    for host, part in sorted(hosts.items()):
        old = list(part.get("old") or [])
        count = max(int(part.get("start") or 0), len(old))
        units[host] = [
            {"host": host, "start": int(i < int(part.get("start") or 0)), "drain": old[i : i + 1]}
            for i in range(count)
        ]
    if host_by_host:
        order = [unit for host in units for unit in units[host]]
    else:
        order = [unit for row in itertools.zip_longest(*units.values()) for unit in row if unit]
    # A host with more replicas than asked gives its surplus back first: the LBs'
    # slots (replicas plus surge) then hold the replicas the release starts.
    order = [u for u in order if not u["start"]] + [u for u in order if u["start"]]
    size = max(1, int(max_parallel))
    return [order[i : i + size] for i in range(0, len(order), size)]


def clone_spec(attrs: dict[str, Any], labels: dict[str, str]) -> dict:
    """version, role, env, resources and network of a container (its ``attrs`` and
    labels as dockerd gives them), to start its like: the env and resources it was
    asked for (label ``cabify.spec``), so that the clone has the same spec hash; for a
    container without that label, read back from its configuration."""
    networks = list(((attrs.get("NetworkSettings") or {}).get("Networks") or {}).keys())
    common = {
        "version": labels.get("cabify.version"),
        "role": labels.get("cabify.role", "stable"),
        "network": networks[0] if networks else None,
    }
    try:
        asked = json.loads(labels["cabify.spec"])
        return {**common, "env": asked["env"], "resources": asked["resources"]}
    except (KeyError, TypeError, ValueError):
        pass
    config = attrs.get("Config") or {}
    host = attrs.get("HostConfig") or {}
    env = dict(e.split("=", 1) for e in config.get("Env") or [] if "=" in e)
    env = {k: v for k, v in env.items() if k not in OWN_ENV}
    resources: dict[str, Any] = {}
    if host.get("Memory"):
        resources["memory"] = f"{host['Memory'] // (1024 * 1024)}m"
    if host.get("NanoCpus"):
        resources["cpus"] = host["NanoCpus"] / 1e9
    return {**common, "env": env, "resources": resources}


def images_to_prune(images: list[dict], keep: int, protect: set[str]) -> list[str]:
    """The app images to remove: all but the KEEP newest, never one a container uses
    (``used``) nor one whose version is in PROTECT (what the pillar runs). IMAGES are
    ``{"tag", "version", "created", "used"}``; returns tags, oldest first."""
    candidates = sorted(images, key=lambda image: image["created"], reverse=True)
    kept = 0
    prune = []
    for image in candidates:
        if image["used"] or image["version"] in protect:
            continue
        kept += 1
        if kept > keep:
            prune.append(image["tag"])
    return sorted(prune, key=lambda tag: next(i["created"] for i in images if i["tag"] == tag))


def nodes_to_reap(
    failed: set[str], seen: dict[str, float], now: float, after: float
) -> tuple[dict, list[str]]:
    """Which failed Consul nodes to force out of the cluster: those seen failed for
    AFTER seconds or more. SEEN maps a node to when it was first seen failed; returns
    the new map (nodes no longer failed are forgotten) and the nodes to reap."""
    since = {node: seen.get(node, now) for node in sorted(failed)}
    return since, [node for node, first in since.items() if now - first >= after]
