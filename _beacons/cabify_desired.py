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
"previous"}`` (and ``strategy``, ``canary``, ``settings`` when the value named them).

The values last seen are kept in the minion's cache (``cabify_desired.json``), so that
neither a restart of the minion or of its beacons nor a Consul that answers with
nothing while it starts releases again what was already released; the keys are read
consistently (a Consul that has just restarted answers, for a moment, with older
values). The first pass ever
only remembers the values; a key that comes later is a change.
"""

from __future__ import annotations

import json
import logging
import os

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


def _memory_path() -> str:
    return os.path.join(__opts__["cachedir"], "cabify_desired.json")


def _remembered() -> dict | None:
    """The values seen last, kept across restarts; None before the first pass ever."""
    if "cabify_desired" not in __context__:
        try:
            with open(_memory_path(), encoding="utf-8") as handle:
                __context__["cabify_desired"] = json.load(handle)
        except (OSError, ValueError):
            __context__["cabify_desired"] = None
    return __context__["cabify_desired"]


def _remember(seen: dict) -> None:
    __context__["cabify_desired"] = seen
    try:
        tmp = _memory_path() + ".tmp"
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(seen, handle)
        os.replace(tmp, _memory_path())
    except OSError as err:
        log.warning("cabify_desired beacon: cannot keep what it saw in %s: %s", _memory_path(), err)


def beacon(config) -> list[dict]:
    prefix = _prefix(config)
    try:
        # Consistent: a Consul that restarts answers with older values for a moment.
        values = __salt__["cabify_consul.kv_tree"](prefix, consistent=True)
    except Exception as err:  # noqa: BLE001 - a beacon never raises
        log.debug("cabify_desired beacon: %s not readable: %s", prefix, err)
        return []
    remembered = _remembered()
    seen = dict(remembered or {})
    found = []
    for key, value in sorted(values.items()):
        pool = key[len(prefix) :]
        if not pool or "/" in pool or value is None:
            continue
        previous, seen[key] = seen.get(key), value
        if remembered is None or value == previous:
            continue
        asked = _asked(value)
        if asked:
            found.append({"tag": pool, "pool": pool, "key": key, "previous": previous, **asked})
    if seen != remembered:
        _remember(seen)
    return found


def _asked(value) -> dict | None:
    """What the value asks for (``cabify_kv.desired_request``); None, logged, for a
    mapping without a version."""
    asked = __salt__["cabify_consul.desired_request"](value)  # beacons get no __utils__
    if asked is None:
        log.warning("cabify_desired beacon: %r names no version: no release", value)
    return asked
