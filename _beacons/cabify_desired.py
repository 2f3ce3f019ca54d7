"""
Watch the Consul KV key that holds the pool's desired version, and fire when it
changes: `consul kv put cabify/desired/version 3` is enough to release.

.. code-block:: yaml

    beacons:
      cabify_desired:
        - key: cabify/desired/version

The value is a version (``3``) or JSON that names the strategy too
(``consul kv put cabify/desired/version '{"version": "3", "strategy": "canary"}'``).
Event ``salt/beacon/<minion>/cabify_desired/`` with data ``{"key", "version",
"previous"}`` (and ``strategy`` when the value named one). The first pass only
remembers the value: a minion that starts does not release again what was already
released.
"""

from __future__ import annotations

import json
import logging

try:
    import consul

    HAS_CONSUL = True
except ImportError:
    HAS_CONSUL = False

log = logging.getLogger(__name__)

__virtualname__ = "cabify_desired"


def __virtual__():
    if not HAS_CONSUL:
        return (False, "cabify_desired beacon: py-consul is not installed in Salt's venv")
    return __virtualname__


def _config(config) -> dict:
    if isinstance(config, list):
        merged: dict = {}
        for item in config:
            merged.update(item)
        return merged
    return dict(config or {})


def validate(config) -> tuple[bool, str]:
    """The configuration is a list of one-key mappings; ``key`` must be a string."""
    if not isinstance(config, (list, dict)):
        return False, "cabify_desired beacon: configuration must be a list of mappings"
    if not isinstance(_config(config).get("key", "cabify/desired/version"), str):
        return False, "cabify_desired beacon: key must be a string"
    return True, "valid"


def beacon(config) -> list[dict]:
    key = _config(config).get("key", "cabify/desired/version")
    memory = __context__.setdefault("cabify_desired", {})
    host = __salt__["config.get"]("consul:api:host", "127.0.0.1")
    port = __salt__["config.get"]("consul:config:ports:http", 8500)
    try:
        _, entry = consul.Consul(host=host, port=port).kv.get(key)
    except Exception as err:  # noqa: BLE001 - a beacon never raises
        log.debug("cabify_desired beacon: %s not readable: %s", key, err)
        return []
    value = entry["Value"].decode().strip() if entry and entry.get("Value") else None
    if "seen" not in memory:
        memory["seen"] = value
        return []
    previous, memory["seen"] = memory["seen"], value
    if value is None or value == previous:
        return []
    asked = _asked(value)
    return [{"key": key, "previous": previous, **asked}] if asked else []


def _asked(value: str) -> dict | None:
    """A plain version (``3``), or JSON naming the strategy too
    (``{"version": "3", "strategy": "canary"}``); None for JSON without a version."""
    if not value.startswith("{"):
        return {"version": value}
    try:
        asked = json.loads(value)
        return {"version": str(asked["version"]), "strategy": asked.get("strategy", "rolling")}
    except (ValueError, KeyError, TypeError):
        log.warning("cabify_desired beacon: %r is JSON without a version: no release", value)
        return None
