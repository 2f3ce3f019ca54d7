"""
A gate state: the formula's merged data is valid, or nothing else of the formula runs.

.. code-block:: yaml

    consul-pillar-valid:
      stack_pillar.valid:
        - formula: consul
        - data: {{ consul | json }}
"""

from __future__ import annotations

from salt.exceptions import CommandExecutionError

__virtualname__ = "stack_pillar"


def __virtual__():
    if "stack_pillar.check" not in __salt__:
        return (False, "stack_pillar execution module is not synced (saltutil.sync_modules)")
    return __virtualname__


def valid(name: str, formula: str, data: dict) -> dict:
    """
    Succeed with no changes when DATA is valid for FORMULA; fail naming each bad key.

    Checking changes nothing, so it runs the same with ``test=True``.
    """
    ret = {"name": name, "changes": {}, "result": True, "comment": ""}
    try:
        __salt__["stack_pillar.check"](formula, data)
    except CommandExecutionError as err:
        ret["result"] = False
        ret["comment"] = str(err)
        return ret
    ret["comment"] = f"pillar of {formula} is valid"
    return ret
