"""
Watch the Consul KV keys that hold each pool's desired version, and fire when one
changes: ``consul kv put cabify/desired/shop 3`` is enough to release version 3 of
pool ``shop``.

.. code-block:: yaml

    beacons:
      cabify_desired:
        - prefix: cabify/desired/      # the default

The value is a version (``3``) or JSON that names the strategy, the canary's settings
and the release's settings too (``{"version": "3", "strategy": "canary", "canary":
{...}, "settings": {"max_parallel": 2}}``). Event
``salt/beacon/<minion>/cabify_desired/<pool>`` with data ``{"pool", "key", "version",
"previous"}`` (and ``strategy``, ``canary``, ``settings`` when the value named them). The first pass
only remembers the values: a minion that starts does not release again what was
already released.
"""

from __future__ import annotations

import logging

import salt.utils.beacons

log = logging.getLogger(__name__)

__virtualname__ = "cabify_desired"


def __virtual__():
    if "cabify_consul.kv_tree" not in __salt__:
        return (False, "cabify_desired beacon: the cabify_consul module is not loaded (py-consul?)")
    return __virtualname__


def _prefix(config) -> str:
    return salt.utils.beacons.list_to_dict(config).get("prefix", "cabify/desired/")


def validate(config) -> tuple[bool, str]:
    """The configuration is a list of one-key mappings; ``prefix`` must be a string ending in /."""
    if not isinstance(config, list):
        return False, "cabify_desired beacon: configuration must be a list of mappings"
    prefix = _prefix(config)
    if not isinstance(prefix, str) or not prefix.endswith("/"):
        return False, "cabify_desired beacon: prefix must be a KV path ending in /"
    return True, "valid"


def beacon(config) -> list[dict]:
    prefix = _prefix(config)
    memory = __context__.setdefault("cabify_desired", {})
    try:
        values = __salt__["cabify_consul.kv_tree"](prefix)
    except Exception as err:  # noqa: BLE001 - a beacon never raises
        log.debug("cabify_desired beacon: %s not readable: %s", prefix, err)
        return []
    first = "seen" not in memory
    seen = memory.setdefault("seen", {})
    found = []
    for key, value in sorted(values.items()):
        pool = key[len(prefix) :]
        if not pool or "/" in pool or value is None:
            continue
        previous, seen[key] = seen.get(key), value
        if first or value == previous:
            continue
        asked = _asked(value)
        if asked:
            found.append({"tag": pool, "pool": pool, "key": key, "previous": previous, **asked})
    return found


def _asked(value) -> dict | None:
    """A plain version (``3``), or a mapping naming the strategy and canary settings
    too; None for a mapping without a version."""
    if not isinstance(value, dict):
        return {"version": str(value)}
    if "version" not in value:
        log.warning("cabify_desired beacon: %r names no version: no release", value)
        return None
    asked = {"version": str(value["version"]), "strategy": value.get("strategy", "rolling")}
    for key in ("canary", "settings"):
        if isinstance(value.get(key), dict):
            asked[key] = value[key]
    return asked
