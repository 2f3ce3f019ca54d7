"""
Consul's ACLs as the master keeps them, asked for from a minion's state run: the
master's runner ``cabify_acl.ensure`` bootstraps the ACL system once and makes the
policies and tokens right (``_runners/cabify_acl.py``). The minion never sees the
management token; the master must let it call that runner (master config
``peer_run``).

.. code-block:: yaml

    consul-service-acl-ensured:
      cabify_acl.ensured:
        - name: cabify_acl.ensure
"""

from __future__ import annotations

__virtualname__ = "cabify_acl"


def __virtual__():
    if "publish.runner" not in __salt__:
        return (False, "cabify_acl state: the publish module is not loaded")
    return __virtualname__


def ensured(name: str = "cabify_acl.ensure", timeout: int = 120) -> dict:
    """
    Ask the master to run ``name`` (``cabify_acl.ensure``); changes are what it
    changed (bootstrap, policies, tokens). Under ``test=True`` the master only says
    what it would change.
    """
    ret = {"name": name, "changes": {}, "result": True, "comment": ""}
    test = bool(__opts__["test"])
    done = __salt__["publish.runner"](name, arg=["test=True"] if test else [], timeout=timeout)
    if not isinstance(done, dict) or "bootstrapped" not in done:
        ret["result"] = False
        ret["comment"] = (
            f"the master did not run {name} for this minion: {done or 'refused'} "
            "(master config peer_run must allow it, and the master must reach Consul)"
        )
        return ret
    changes = {k: done[k] for k in ("policies", "tokens") if done.get(k)}
    if done["bootstrapped"] != "before":
        changes["bootstrapped"] = done["bootstrapped"]
    ret["changes"] = changes
    if test and changes:
        ret["result"] = None
        ret["comment"] = f"The master would change Consul's ACLs: {changes}"
    else:
        ret["comment"] = "Consul's ACLs changed" if changes else "Consul's ACLs are as they should be"
    return ret
