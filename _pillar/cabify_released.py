"""
What the fleet's releases set, as pillar: the one source of truth for a pool's version.

When the release controller on the master finishes a release of a pool, it writes what
it set to Consul KV (``cabify/released/<pool>``: ``{"version", "env", "canary",
"release"}``). This external pillar gives it back to every app host of the
controller's (``cabify_controller:app_target``) whose pillar has that pool, as
``cabify:pools:<pool>:version`` (and ``env`` and ``canary`` when the release set
them), over what the pillar files say. A plain ``state.apply`` then keeps what the
last release set instead of undoing it.

.. code-block:: yaml

    # master configuration
    pillar_dirs:
      - /srv/cabify/_pillar
    ext_pillar:
      - cabify_released: {}

Consul is reached as the release controller reaches it (``cabify_controller:consul``).
When it does not answer (a fleet whose Consul is not up yet, or down), the pillar says
so in ``cabify:released_unreadable``, and the pool state refuses to change the version
a pool runs (it still starts a pool from nothing, scales and registers): falling back
to the pillar files' version could undo the last release.
``consul kv delete cabify/released/<pool>`` gives the pool back to the pillar files.
"""

from __future__ import annotations

import logging
from typing import Any

import salt.utils.minions

log = logging.getLogger(__name__)

__virtualname__ = "cabify_released"


def __virtual__():
    try:
        import consul  # noqa: F401, PLC0415 - the client comes from cabify_kv
    except ImportError:
        return (False, "cabify_released ext_pillar: py-consul is not installed in Salt's venv")
    return __virtualname__


def ext_pillar(minion_id: str, pillar: dict, **_: Any) -> dict:
    """The released version (and env) of each pool that MINION_ID's PILLAR has."""
    pools = ((pillar or {}).get("cabify") or {}).get("pools") or {}
    if not pools:
        return {}
    kv = __utils__
    target = kv["cabify_kv.controller_config"](__opts__)["app_target"]
    if minion_id not in salt.utils.minions.CkMinions(__opts__).check_minions(target, "compound")["minions"]:
        return {}
    try:
        client = kv["cabify_kv.fleet_client"](__opts__)
        _, entries = client.kv.get(kv["cabify_kv.released"](), recurse=True)
    except Exception as err:  # noqa: BLE001 - said in pillar: the pool state then changes no version
        log.warning("cabify_released: %s: the released versions cannot be read: %s", minion_id, err)
        return {"cabify": {"released_unreadable": str(err)[:300]}}
    found: dict[str, dict] = {}
    for entry in entries or []:
        pool = kv["cabify_kv.pool_of"](entry["Key"], "released")
        value = kv["cabify_kv.decode"](entry.get("Value"))
        if pool not in pools or not isinstance(value, dict) or value.get("version") is None:
            continue
        found[pool] = {"version": str(value["version"])}
        for key in ("env", "canary"):
            if isinstance(value.get(key), dict):
                found[pool][key] = value[key]
        log.debug(
            "cabify_released: %s: pool %s at %s (release %s)", minion_id, pool, value, value.get("release")
        )
    return {"cabify": {"pools": found}} if found else {}
