"""
Where a pool's release state lives in Consul KV, and how values are written there.
Every module, beacon and runner names keys through these functions, so the layout is
written once:

    cabify/locks/<pool>              the release lock (a session holds it; value: holder)
    cabify/history/<pool>/<id>       one JSON record per release
    cabify/weights/<pool>            per-replica weights while a canary runs
    cabify/canary/<pool>/state       the running (or last) canary's live state
    cabify/canary/<pool>/command     an operator's promote / abort
    cabify/desired/<pool>            the version an operator wants (beacon cabify_desired)
"""

from __future__ import annotations

import json
from typing import Any

PREFIX = "cabify"


def root() -> str:
    return PREFIX


def lock(pool: str) -> str:
    return f"{PREFIX}/locks/{pool}"


def history(pool: str, release_id: str | None = None) -> str:
    return f"{PREFIX}/history/{pool}/" + (release_id or "")


def weights(pool: str) -> str:
    return f"{PREFIX}/weights/{pool}"


def canary_state(pool: str) -> str:
    return f"{PREFIX}/canary/{pool}/state"


def canary_command(pool: str) -> str:
    return f"{PREFIX}/canary/{pool}/command"


def desired(pool: str | None = None) -> str:
    return f"{PREFIX}/desired/" + (pool or "")


def pool_of(key: str, kind: str) -> str | None:
    """The pool a key of KIND (``locks``, ``desired``, ``history``...) belongs to."""
    parts = key.split("/")
    if len(parts) >= 3 and parts[0] == PREFIX and parts[1] == kind:
        return parts[2]
    return None


def encode(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def decode(raw: bytes | str | None) -> Any:
    """A KV value: a JSON object, array or string when it is one, else the stripped
    text (``consul kv put cabify/desired/shop 1.10`` means version "1.10", not 1.1);
    None when empty."""
    if raw is None:
        return None
    text = (raw.decode() if isinstance(raw, bytes) else raw).strip()
    if not text:
        return None
    if text[0] in '{["':
        try:
            return json.loads(text)
        except ValueError:
            pass
    return text


def client(host: str = "127.0.0.1", port: int = 8500, token: str | None = None):
    """A py-consul client for the agent at HOST:PORT, with TOKEN when ACLs are on."""
    import consul  # noqa: PLC0415 - only the callers that talk to Consul need it

    return consul.Consul(host=host, port=int(port), token=token or None)
