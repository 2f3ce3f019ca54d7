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


def journal(pool: str) -> str:
    return f"{PREFIX}/journal/{pool}"


def trigger(pool: str) -> str:
    return f"{PREFIX}/triggers/{pool}"


def command(pool: str) -> str:
    return f"{PREFIX}/commands/{pool}"


def released(pool: str | None = None) -> str:
    return f"{PREFIX}/released/" + (pool or "")


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


def desired_request(value: Any) -> dict | None:
    """What a desired-version value (``cabify/desired/<pool>``) asks for: a plain
    version (``3``), or a mapping naming the strategy, canary and release settings too;
    None for a mapping without a version."""
    if not isinstance(value, dict):
        return None if value is None else {"version": str(value)}
    if "version" not in value:
        return None
    asked = {"version": str(value["version"]), "strategy": value.get("strategy", "rolling")}
    for key in ("canary", "settings"):
        if isinstance(value.get(key), dict):
            asked[key] = value[key]
    return asked


def client(host: str = "127.0.0.1", port: int = 8500, token: str | None = None):
    """A py-consul client for the agent at HOST:PORT, with TOKEN when ACLs are on (over
    CONSUL_HTTP_TOKEN, which py-consul would prefer: each caller passes its own)."""
    import consul  # noqa: PLC0415 - only the callers that talk to Consul need it

    reached = consul.Consul(host=host, port=int(port), token=token or None)
    if token:
        reached.token = token
    return reached


def denied(err: Exception) -> bool:
    """Consul refused a request for its token (missing, unknown or not allowed)."""
    if type(err).__name__ == "ACLPermissionDenied":
        return True
    text = str(err)
    return "ACL not found" in text or "Permission denied" in text


def controller_config(opts: dict) -> dict:
    """Where the master's release controller finds the fleet (master configuration
    ``cabify_controller``): Consul's hosts (tried in turn), port and token, and the
    compound targets of the app hosts and of the LBs."""
    conf = opts.get("cabify_controller") or {}
    reach = conf.get("consul") or {}
    return {
        "consul_hosts": list(reach.get("hosts") or ["127.0.0.1"]),
        "consul_port": int(reach.get("port") or 8500),
        "consul_token": reach.get("token") or _controller_token(opts),
        "app_target": conf.get("app_target") or "G@roles:app",
        "lb_target": conf.get("lb_target") or "G@roles:lb",
    }


def _controller_token(opts: dict) -> str | None:
    """The controller's token, derived from the master's ACL secrets (cabify_acl.py,
    beside this file: Salt's loader does not make its utils importable by name)."""
    import importlib.util  # noqa: PLC0415
    import os  # noqa: PLC0415

    spec = importlib.util.spec_from_file_location(
        "cabify_acl_for_kv", os.path.join(os.path.dirname(os.path.abspath(__file__)), "cabify_acl.py")
    )
    acl = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(acl)
    secrets = acl.load(acl.secrets_path(opts), create=False)
    return acl.token_ids(secrets, "controller")["SecretID"] if secrets else None


def fleet_client(opts: dict):
    """A client of the first Consul of the master's ``cabify_controller:consul:hosts``
    that answers with a leader; raises naming what each one said."""
    from salt.exceptions import CommandExecutionError  # noqa: PLC0415

    conf = controller_config(opts)
    problems = []
    for host in conf["consul_hosts"]:
        reached = client(host, conf["consul_port"], conf["consul_token"])
        try:
            if not reached.status.leader():
                problems.append(f"{host}: no leader")
                continue
        except Exception as err:  # noqa: BLE001 - the next one is tried
            problems.append(f"{host}: {err}")
            continue
        try:
            reached.kv.get(f"{PREFIX}/", keys=True)
        except Exception as err:
            if denied(err):
                raise CommandExecutionError(
                    f"Consul at {host} refuses the release controller's token (role controller: master "
                    f"config cabify_controller:consul:token, or derived from cabify_acl:secrets): {err}. "
                    "Run salt-run cabify_acl.ensure"
                ) from err
        return reached
    raise CommandExecutionError(f"no Consul of the fleet answers with a leader: {'; '.join(problems)}")
