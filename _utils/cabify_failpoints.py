"""
Failpoints: named places in the release and pool code where a test can make the real
thing fail, the way etcd's gofail or FreeBSD's fail points do.

Off unless the file ``/run/cabify/failpoints.json`` exists (root only, on tmpfs: gone at
reboot). It maps a failpoint name to what happens there:

.. code-block:: json

    {"pool.drain": {"action": "docker-error", "times": 1},
     "release.abort": {"action": "exit"}}

Actions: ``docker-error`` raises ``docker.errors.APIError``, ``consul-error`` raises
``consul.ConsulException``, ``error`` raises ``CommandExecutionError``, ``exit`` ends the
process at once (a crash: nothing after it runs, no cleanup), ``sleep`` waits
``seconds``, ``env`` gives the caller ``env`` (a mapping) to add to what it starts (at
``pool.start``: a replica built wrong on this host only). ``times`` counts down and the
failpoint is gone at 0; without it, the failpoint fires every time.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import time

log = logging.getLogger(__name__)

PATH = "/run/cabify/failpoints.json"


def _take(name: str) -> dict | None:
    """The failpoint NAME's setting if it is armed, counting one firing down."""
    if not os.path.exists(PATH):
        return None
    with open(PATH, "r+", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            points = json.loads(handle.read() or "{}")
        except ValueError:
            return None
        point = points.get(name)
        if not isinstance(point, dict):
            return None
        if "times" in point:
            point["times"] = int(point["times"]) - 1
            if point["times"] <= 0:
                del points[name]
            handle.seek(0)
            handle.truncate()
            handle.write(json.dumps(points))
        return point


def hit(name: str) -> dict | None:
    """Fire failpoint NAME if a test armed it; nothing otherwise. An ``env`` action
    returns its mapping to the caller."""
    point = _take(name)
    if point is None:
        return None
    action = point.get("action", "error")
    log.warning("cabify failpoint %s: %s", name, action)
    if action == "env":
        return dict(point.get("env") or {})
    if action == "sleep":
        time.sleep(float(point.get("seconds", 1)))
        return None
    if action == "exit":
        os._exit(int(point.get("code", 137)))
    message = f"injected failure at failpoint {name}"
    if action == "docker-error":
        import docker.errors  # noqa: PLC0415 - only when a test asks for it

        raise docker.errors.APIError(message)
    if action == "consul-error":
        import consul  # noqa: PLC0415 - only when a test asks for it

        raise consul.ConsulException(message)
    from salt.exceptions import CommandExecutionError  # noqa: PLC0415

    raise CommandExecutionError(message)
