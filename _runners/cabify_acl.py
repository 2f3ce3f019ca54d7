"""
Consul's ACL system, kept by the master: bootstrapped once, then this project's
policies and every token of the master and of its minions (``_utils/cabify_acl.py``
says which and what each may do).

.. code-block:: bash

    salt-run cabify_acl.ensure              # bootstrap once, then policies and tokens
    salt-run cabify_acl.ensure test=True    # what it would change
    salt-run cabify_acl.token operator      # the operators' token (KV writes by hand)

The management token never leaves the master: it is kept in the secrets file
(master config ``cabify_acl:secrets``, 0600) and used only here. Consul servers'
highstates reach ``ensure`` through ``publish.runner`` (master config ``peer_run``);
``orch.fleet`` runs it once the cluster has a leader.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

import salt.key
import salt.pillar
from salt.exceptions import CommandExecutionError

try:
    import requests

    HAS_REQUESTS = True
except ImportError:
    HAS_REQUESTS = False

log = logging.getLogger(__name__)

__virtualname__ = "cabify_acl"

# Consul's built-in anonymous token: what a request without a token may do.
ANONYMOUS = "00000000-0000-0000-0000-000000000002"
# How long a bootstrap waits for a leader whose ACL system is ready.
BOOTSTRAP_WAIT = 60


def __virtual__():
    if not HAS_REQUESTS:
        return (False, "cabify_acl runner: requests is not installed in Salt's venv")
    return __virtualname__


def _acl(func: str, *args, **kwargs) -> Any:
    return __utils__[f"cabify_acl.{func}"](*args, **kwargs)


def _path() -> str:
    return _acl("secrets_path", __opts__)


@contextlib.contextmanager
def _locked_secrets():
    """The master's secrets, made on first use, held under their lock (one bootstrap,
    one writer at a time)."""
    path = _path()
    _acl("load", path)  # made before the lock is taken (load takes it to make one)
    with __utils__["cabify_acl.locked"](path):
        yield _acl("load", path, create=False)


class _Consul:
    """Consul's HTTP API as the master reaches it (``cabify_controller:consul``)."""

    def __init__(self, secrets: dict):
        conf = __utils__["cabify_kv.controller_config"](__opts__)
        self.urls = [f"http://{host}:{conf['consul_port']}" for host in conf["consul_hosts"]]
        self.secrets = secrets
        # One master may keep several clusters (the one-host stack's, a fleet's): each
        # has its own management token, kept under the hosts the master reaches it at.
        self.cluster = _acl("cluster", conf["consul_hosts"], conf["consul_port"])
        self.secrets.setdefault("management", {})

    @property
    def token(self) -> str | None:
        return (self.secrets["management"].get(self.cluster) or {}).get("SecretID")

    def call(self, method: str, path: str, token: str | None = None, body: Any = None):
        """(status, JSON or text) from the first Consul that answers."""
        problems = []
        for url in self.urls:
            try:
                answer = requests.request(
                    method,
                    url + path,
                    json=body,
                    headers={"X-Consul-Token": token} if token else {},
                    timeout=10,
                )
            except requests.RequestException as err:
                problems.append(f"{url}: {err}")
                continue
            try:
                return answer.status_code, answer.json()
            except ValueError:
                return answer.status_code, answer.text.strip()
        raise CommandExecutionError(f"cabify_acl: no Consul answers: {'; '.join(problems)}")

    def management(self, method: str, path: str, body: Any = None):
        """A call with the management token; an error says what was asked and why."""
        status, data = self.call(method, path, self.token, body)
        if status != 200:
            raise CommandExecutionError(
                _acl("redact", f"cabify_acl: {method} {path}: HTTP {status}: {data}", self.secrets)
            )
        return data


def _bootstrap(consul: _Consul, test: bool) -> str:
    """Make sure the secrets hold a management token Consul knows: 'before' when it
    does, 'now' when this call bootstrapped the ACL system (or would, under TEST)."""
    secrets = consul.secrets
    if consul.token:
        deadline = time.monotonic() + BOOTSTRAP_WAIT
        status, data = consul.call("GET", "/v1/acl/token/self", consul.token)
        while status >= 500 and time.monotonic() < deadline:  # its ACLs are starting
            time.sleep(1)
            status, data = consul.call("GET", "/v1/acl/token/self", consul.token)
        if status == 200:
            return "before"
        if "ACL not found" not in str(data):
            raise CommandExecutionError(
                f"cabify_acl: Consul does not take the management token: HTTP {status}: {data}"
            )
        # Consul's data was wiped (a new cluster): the old token is gone, bootstrap again.
        log.warning("cabify_acl: Consul no longer knows the management token: bootstrapping its ACLs again")
    if test:
        return "now"
    deadline = time.monotonic() + BOOTSTRAP_WAIT
    while True:
        status, data = consul.call("PUT", "/v1/acl/bootstrap")
        if status == 200:
            secrets["management"][consul.cluster] = {
                "AccessorID": data["AccessorID"],
                "SecretID": data["SecretID"],
            }
            _acl("save", _path(), secrets)
            log.warning(
                "cabify_acl: Consul's ACL system bootstrapped; its management token is in %s", _path()
            )
            return "now"
        if "no longer allowed" in str(data):
            raise CommandExecutionError(
                f"cabify_acl: Consul's ACLs were bootstrapped, but not with a management token this "
                f"master has ({_path()}): {data}. To bootstrap again, write that reset index to "
                "acl-bootstrap-reset in the leader's data_dir (Consul's ACL reset procedure), then "
                "run salt-run cabify_acl.ensure"
            )
        if time.monotonic() > deadline:
            raise CommandExecutionError(
                f"cabify_acl: Consul did not let its ACLs be bootstrapped: HTTP {status}: {data}"
            )
        time.sleep(1)  # the leader's ACL system is not ready yet


def _minions() -> dict[str, dict]:
    """Every accepted minion whose grains the master has: its roles (as the master
    knows them: ``cabify_acl.roles``), Consul node name, datacenter and pools (from its
    pillar files)."""
    accepted = salt.key.get_key(__opts__).list_keys().get("minions", [])
    grains = __salt__["cache.grains"](tgt="*") or {}
    found = {}
    for minion in accepted:
        if minion not in grains:
            log.info("cabify_acl: no grains cached for %s yet: its tokens wait for its next run", minion)
            continue
        pillar = salt.pillar.get_pillar(__opts__, grains[minion], minion, saltenv="base").compile_pillar(
            ext=False
        )
        found[minion] = {
            "roles": _acl("roles", minion, pillar, __opts__),
            "node": grains[minion].get("nodename") or minion,
            "datacenter": ((pillar.get("consul") or {}).get("config") or {}).get("datacenter") or "dc1",
            "pools": sorted(((pillar.get("cabify") or {}).get("pools") or {}).keys()),
        }
    return found


def _policies(consul: _Consul, wanted: dict, test: bool) -> dict[str, str]:
    existing = {p["Name"]: p for p in consul.management("GET", "/v1/acl/policies") or []}
    changes = {}
    for name, policy in sorted(wanted.items()):
        body = {"Name": name, **policy}
        if name not in existing:
            changes[name] = "created"
            if not test:
                consul.management("PUT", "/v1/acl/policy", body)
            continue
        current = consul.management("GET", f"/v1/acl/policy/{existing[name]['ID']}")
        if current.get("Rules") != policy["Rules"] or current.get("Description") != policy["Description"]:
            changes[name] = "updated"
            if not test:
                consul.management("PUT", f"/v1/acl/policy/{existing[name]['ID']}", body)
    return changes


def _tokens(consul: _Consul, wanted: dict, test: bool) -> dict[str, str]:
    existing = {t["AccessorID"]: t for t in consul.management("GET", "/v1/acl/tokens") or []}
    changes = {}
    for name, token in sorted(wanted.items()):
        changed = _acl("token_changes", existing.get(token["AccessorID"]), token)
        if not changed:
            continue
        changes[name] = ", ".join(changed)
        if test:
            continue
        if changed == ["created"]:
            consul.management("PUT", "/v1/acl/token", token)
        else:
            consul.management("PUT", f"/v1/acl/token/{token['AccessorID']}", token)
    # A minion whose key was deleted: its tokens of this generation go too (an older
    # generation's are prune's).
    wanted_ids = {t["AccessorID"] for t in wanted.values()}
    generation = int(consul.secrets["generation"]["tokens"])
    for token in existing.values():
        if (
            _acl("is_ours", token)
            and _acl("token_generation", token) == generation
            and token["AccessorID"] not in wanted_ids
        ):
            changes[f"unwanted: {token['Description']}"] = "deleted"
            if not test:
                consul.management("DELETE", f"/v1/acl/token/{token['AccessorID']}")
    anonymous = consul.management("GET", f"/v1/acl/token/{ANONYMOUS}")
    if [p.get("Name") for p in anonymous.get("Policies") or []] != ["cabify-dns"]:
        changes["anonymous"] = "policies"
        if not test:
            body = {"Description": anonymous.get("Description", ""), "Policies": [{"Name": "cabify-dns"}]}
            consul.management("PUT", f"/v1/acl/token/{ANONYMOUS}", body)
    return changes


def ensure(test: bool = False) -> dict[str, Any]:
    """
    Bootstrap Consul's ACL system once (the management token is kept in the master's
    secrets file), then make this project's policies and the tokens of the master and
    of every accepted minion what they should be, and give the anonymous token the DNS
    reads only. Changes nothing that is right; never prints a secret. With test=True,
    says what it would change.

    CLI Example:

    .. code-block:: bash

        salt-run cabify_acl.ensure
        salt-run cabify_acl.ensure test=True
    """
    test = bool(test or __opts__.get("test"))
    with _locked_secrets() as secrets:
        consul = _Consul(secrets)
        bootstrapped = _bootstrap(consul, test)
        minions = _minions()
        pools = sorted({p for m in minions.values() if "app" in m["roles"] for p in m["pools"]})
        wanted_policies = _acl("policies", pools)
        wanted_tokens = _acl("wanted_tokens", consul.secrets, minions)
        if test and bootstrapped == "now":
            return {
                "result": None,
                "bootstrapped": "would bootstrap",
                "policies": dict.fromkeys(wanted_policies, "created"),
                "tokens": dict.fromkeys(wanted_tokens, "created"),
            }
        policies = _policies(consul, wanted_policies, test)
        tokens = _tokens(consul, wanted_tokens, test)
    changed = bool(policies or tokens or bootstrapped == "now")
    if changed and not test:
        log.warning("cabify_acl: bootstrapped %s; policies %s; tokens %s", bootstrapped, policies, tokens)
    return {
        "result": None if test and changed else True,
        "bootstrapped": bootstrapped,
        "policies": policies,
        "tokens": tokens,
        "minions": sorted(minions),
    }


def _held_locks(consul: _Consul) -> list[str]:
    """The release locks a session holds now (releases running)."""
    status, entries = consul.call("GET", "/v1/kv/cabify/locks/?recurse=true", consul.token)
    if status == 404:
        return []
    if status != 200:
        raise CommandExecutionError(f"cabify_acl: reading the release locks: HTTP {status}: {entries}")
    return sorted(e["Key"] for e in entries if e.get("Session"))


def rotate_tokens(test: bool = False) -> dict[str, Any]:
    """
    Start a new generation of every token of this project (the controller's, the
    operators', each host's and each agent's): the next generation's tokens are made
    (``ensure``) beside the old ones, which keep working until ``prune``. Pillar gives
    the new ones at once; ``orch.consul_tokens`` then gets them to every agent and
    registration, and prunes.

    CLI Example:

    .. code-block:: bash

        salt-run cabify_acl.rotate_tokens
    """
    test = bool(test or __opts__.get("test"))
    with _locked_secrets() as secrets:
        consul = _Consul(secrets)
        held = _held_locks(consul)
        if held:
            raise CommandExecutionError(
                f"cabify_acl: releases are running ({', '.join(held)}): a rotation would cut their "
                "sessions off; rotate once they end"
            )
        generation = int(secrets["generation"]["tokens"])
        if test:
            return {"result": None, "comment": f"would make generation {generation + 1}'s tokens"}
        secrets["generation"]["tokens"] = generation + 1
        _acl("save", _path(), secrets)
    log.warning("cabify_acl: tokens now of generation %s", generation + 1)
    return {"generation": generation + 1, **ensure()}


def prune(test: bool = False) -> dict[str, Any]:
    """
    Delete this project's tokens of an older generation than the current one (after
    ``rotate_tokens``, once every agent and registration uses the new ones). Tokens
    that name no generation, and other tokens, are left alone.

    CLI Example:

    .. code-block:: bash

        salt-run cabify_acl.prune test=True
    """
    test = bool(test or __opts__.get("test"))
    with _locked_secrets() as secrets:
        consul = _Consul(secrets)
        current = int(consul.secrets["generation"]["tokens"])
        old = [
            t
            for t in consul.management("GET", "/v1/acl/tokens") or []
            if _acl("is_ours", t) and (_acl("token_generation", t) or current) < current
        ]
        if not test:
            for token in old:
                consul.management("DELETE", f"/v1/acl/token/{token['AccessorID']}")
    deleted = sorted(t["Description"] for t in old)
    if deleted and not test:
        log.warning("cabify_acl: deleted %s tokens of older generations", len(deleted))
    return {"result": None if test and deleted else True, "deleted": deleted}


def _fingerprint(key: str) -> str:
    """A gossip key's short SHA-256 (for output and logs: never the key)."""
    import hashlib  # noqa: PLC0415

    return hashlib.sha256(key.encode()).hexdigest()[:12]


def rotate_gossip_key(test: bool = False) -> dict[str, Any]:
    """
    Rotate Consul's gossip encryption key: install the next generation's key on every
    member (``/v1/operator/keyring``), make it the one in use, remember its generation
    in the secrets file, and remove the old key. Pillar then gives agents without a
    keyring (new hosts) the new key; ``orch.consul_gossip_key`` writes it everywhere.
    A member down meanwhile keeps the old key only: remove its
    ``<data_dir>/serf/local.keyring`` before it starts again. Returns key
    fingerprints, never keys.

    CLI Example:

    .. code-block:: bash

        salt-run cabify_acl.rotate_gossip_key
        salt-run cabify_acl.rotate_gossip_key test=True
    """
    test = bool(test or __opts__.get("test"))
    with _locked_secrets() as secrets:
        consul = _Consul(secrets)
        generation = int(secrets["generation"]["gossip"])
        old, new = _acl("gossip_key", secrets), _acl("gossip_key", secrets, generation + 1)
        if test:
            return {
                "result": None,
                "comment": f"would install and use generation {generation + 1}'s key "
                f"({_fingerprint(new)}), then remove generation {generation}'s ({_fingerprint(old)})",
            }
        consul.management("POST", "/v1/operator/keyring", {"Key": new})
        consul.management("PUT", "/v1/operator/keyring", {"Key": new})
        secrets["generation"]["gossip"] = generation + 1
        _acl("save", _path(), secrets)
        consul.management("DELETE", "/v1/operator/keyring", {"Key": old})
        rings = consul.management("GET", "/v1/operator/keyring") or []
    log.warning("cabify_acl: gossip key rotated to generation %s (%s)", generation + 1, _fingerprint(new))
    return {
        "result": True,
        "generation": generation + 1,
        "key": _fingerprint(new),
        "keyrings": [
            {
                "pool": "WAN" if ring.get("WAN") else "LAN",
                "nodes": ring.get("NumNodes"),
                "keys": {_fingerprint(k): n for k, n in (ring.get("Keys") or {}).items()},
            }
            for ring in rings
        ],
    }


def token(name: str) -> str:
    """
    The SecretID of this project's token NAME: ``operator`` (an operator's KV writes:
    ``CONSUL_HTTP_TOKEN=... consul kv put cabify/desired/shop 3``), ``controller``,
    ``host:<minion>`` or ``agent:<minion>``. Never the management token.

    CLI Example:

    .. code-block:: bash

        salt-run cabify_acl.token operator
    """
    secrets = _acl("load", _path(), create=False)
    if not secrets:
        raise CommandExecutionError(f"cabify_acl: no secrets yet ({_path()}): run salt-run cabify_acl.ensure")
    if name not in ("operator", "controller") and not name.startswith(("host:", "agent:")):
        raise CommandExecutionError(
            f"cabify_acl: no token named {name!r}: operator, controller, host:<minion>, agent:<minion>"
        )
    return _acl("token_ids", secrets, name)["SecretID"]
