"""
Consul's ACLs for this project: what each role may do (policies), the tokens of each
host and of the master, and the secrets they are made of. Pure: the master's runner
``cabify_acl`` puts them in Consul, the master's ext_pillar ``cabify_acl`` gives each
minion its own.

Secrets live in one file on the master (master config ``cabify_acl:secrets``, by
default ``/etc/cabify/consul-acl.json``, 0600 in a 0700 directory): a random seed, the
generation of the tokens and of the gossip key, and Consul's management token of each
cluster the master bootstrapped (by the hosts it reaches it at: ``cluster``). Every
other secret is derived from the seed (HMAC-SHA256), so the ext_pillar and the runner
agree without sharing state, and a new generation rotates them:

    agent:<minion>   the agent's own token (node identity: writes its node only)
    host:<minion>    the token of the minion's Salt modules, with its roles' policies
    controller       the master's release controller
    operator         people: the desired versions and the commands
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import re
import secrets as _random
import uuid
from typing import Any

SECRETS = "/etc/cabify/consul-acl.json"
PREFIX = "cabify"


def secrets_path(opts: dict) -> str:
    """The master's secrets file (master config ``cabify_acl:secrets``)."""
    return ((opts or {}).get("cabify_acl") or {}).get("secrets") or SECRETS


@contextlib.contextmanager
def locked(path: str):
    """Hold the secrets file's lock (one bootstrap, one writer at a time)."""
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    with open(path + ".lock", "a", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def load(path: str, create: bool = True) -> dict | None:
    """The secrets, made (a new seed, generation 1) when the file does not exist and
    CREATE; None when it does not and not CREATE."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        if not create:
            return None
    with locked(path):
        if os.path.exists(path):
            with open(path, encoding="utf-8") as handle:
                return json.load(handle)
        fresh = {"seed": _random.token_hex(32), "generation": {"tokens": 1, "gossip": 1}}
        save(path, fresh)
        return fresh


def save(path: str, secrets: dict) -> None:
    """Write SECRETS to PATH atomically, readable by root only."""
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(secrets, handle, indent=2, sort_keys=True)
    os.replace(tmp, path)


def _derive(secrets: dict, *parts: str) -> bytes:
    return hmac.new(bytes.fromhex(secrets["seed"]), "/".join(parts).encode(), hashlib.sha256).digest()


def _uuid(raw: bytes) -> str:
    return str(uuid.UUID(bytes=raw[:16], version=4))


def token_ids(secrets: dict, name: str, generation: int | None = None) -> dict[str, str]:
    """The AccessorID and SecretID of token NAME (``agent:<minion>``, ``host:<minion>``,
    ``controller``, ``operator``) in the tokens' GENERATION (the current one by default)."""
    gen = str(generation or secrets["generation"]["tokens"])
    return {
        "AccessorID": _uuid(_derive(secrets, "token", gen, name, "accessor")),
        "SecretID": _uuid(_derive(secrets, "token", gen, name, "secret")),
    }


def gossip_key(secrets: dict, generation: int | None = None) -> str:
    """The gossip encryption key (32 bytes, base64) of GENERATION (the current one)."""
    gen = str(generation or secrets["generation"]["gossip"])
    return base64.b64encode(_derive(secrets, "gossip", gen)).decode()


# --- policies -------------------------------------------------------------------------


def _rules(**kinds: dict[str, str]) -> str:
    """Consul rules as JSON (Consul reads HCL or JSON): kind -> {name: policy}; the
    kinds ``operator``, ``keyring`` take a policy string."""
    rules: dict[str, Any] = {}
    for kind, value in kinds.items():
        if isinstance(value, str):
            rules[kind] = value
        else:
            rules[kind] = {name: {"policy": policy} for name, policy in sorted(value.items())}
    return json.dumps(rules, sort_keys=True)


def policies(pools: list[str]) -> dict[str, dict[str, str]]:
    """Every policy of this project by name: its description and its rules. POOLS are the
    services app hosts may register."""
    reads = {"node_prefix": {"": "read"}, "service_prefix": {"": "read"}}
    release = {
        f"{PREFIX}/": "read",
        f"{PREFIX}/locks/": "write",
        f"{PREFIX}/history/": "write",
        f"{PREFIX}/weights/": "write",
        f"{PREFIX}/canary/": "write",
    }
    return {
        "cabify-dns": {
            "Description": "anonymous: the reads of Consul's DNS and of HAProxy's resolvers",
            "Rules": _rules(**reads),
        },
        "cabify-host": {
            "Description": "every host's Salt: services, nodes and the desired versions (beacon)",
            "Rules": _rules(**reads, key_prefix={f"{PREFIX}/desired/": "read"}),
        },
        "cabify-app": {
            "Description": "app hosts: the pools' services, a local release's lock, record and weights",
            "Rules": _rules(
                node_prefix={"": "read"},
                service_prefix={"": "read"},
                service={pool: "write" for pool in pools},
                session_prefix={"": "write"},
                key_prefix=release,
            ),
        },
        "cabify-consul-server": {
            "Description": "Consul servers' Salt: force failed nodes out",
            "Rules": _rules(**reads, operator="write"),
        },
        "cabify-controller": {
            "Description": "the master's release controller: every key under cabify/, its sessions",
            "Rules": _rules(
                node_prefix={"": "read"},
                service_prefix={"": "write"},
                session_prefix={"": "write"},
                key_prefix={f"{PREFIX}/": "write"},
                operator="read",
            ),
        },
        "cabify-operator": {
            "Description": "operators: desired versions, promote/abort commands, reads",
            "Rules": _rules(
                **reads,
                key_prefix={
                    f"{PREFIX}/": "read",
                    f"{PREFIX}/desired/": "write",
                    f"{PREFIX}/commands/": "write",
                    f"{PREFIX}/canary/": "write",
                },
            ),
        },
    }


def roles(minion: str, pillar: dict | None, opts: dict | None) -> list[str]:
    """MINION's roles as the master knows them, never as the minion says (its grains):
    its host in pillar ``fleet:hosts``, else master config ``cabify_acl:roles``
    (minion ID -> roles); none otherwise."""
    hosts = (((pillar or {}).get("fleet") or {}).get("hosts")) or {}
    if minion in hosts:
        return sorted(hosts[minion].get("roles") or [])
    return sorted((((opts or {}).get("cabify_acl") or {}).get("roles") or {}).get(minion) or [])


# Which policies a host's token gets for each of its roles.
ROLE_POLICIES = {"app": "cabify-app", "consul-server": "cabify-consul-server"}


def host_policies(roles: list[str]) -> list[str]:
    """The policies of a host with ROLES: every host's, then its roles' (an LB needs
    no more than every host's reads)."""
    return ["cabify-host", *sorted({ROLE_POLICIES[r] for r in roles or [] if r in ROLE_POLICIES})]


def wanted_tokens(secrets: dict, minions: dict[str, dict], datacenter: str = "dc1") -> dict[str, dict]:
    """Every token this project wants in Consul, by name (``host:<minion>``...). MINIONS:
    minion ID -> {"roles": [...], "node": its Consul node name}."""
    tokens = {}

    generation = secrets["generation"]["tokens"]

    def add(
        name: str,
        description: str,
        policies_: list[str],
        node: str | None = None,
        datacenter: str = datacenter,
    ) -> None:
        token = token_ids(secrets, name) | {
            "Description": f"cabify {description} [generation {generation}]",
            "Policies": [{"Name": p} for p in policies_],
            "Local": False,
        }
        if node:
            token["NodeIdentities"] = [{"NodeName": node, "Datacenter": datacenter}]
        tokens[name] = token

    add("controller", "release controller (master)", ["cabify-controller"])
    add("operator", "operators", ["cabify-operator"])
    for minion, facts in sorted(minions.items()):
        roles = sorted(facts.get("roles") or [])
        add(f"host:{minion}", f"host {minion} ({', '.join(roles) or 'no role'})", host_policies(roles))
        add(
            f"agent:{minion}",
            f"agent of {minion}",
            [],
            node=facts.get("node") or minion,
            datacenter=facts.get("datacenter") or datacenter,
        )
    return tokens


def token_changes(current: dict | None, wanted: dict) -> list[str]:
    """What differs between a token as Consul has it (None: missing) and as wanted."""
    if current is None:
        return ["created"]
    changed = []
    if current.get("Description") != wanted["Description"]:
        changed.append("description")
    if sorted(p.get("Name") for p in current.get("Policies") or []) != sorted(
        p["Name"] for p in wanted["Policies"]
    ):
        changed.append("policies")
    mine = [(n["NodeName"], n["Datacenter"]) for n in wanted.get("NodeIdentities") or []]
    theirs = [(n.get("NodeName"), n.get("Datacenter")) for n in current.get("NodeIdentities") or []]
    if mine != theirs:
        changed.append("node identity")
    return changed


def token_generation(token: dict) -> int | None:
    """The generation a token of this project was made in (its description says), or
    None for one that does not say."""
    found = re.search(r"\[generation (\d+)\]$", str(token.get("Description", "")))
    return int(found.group(1)) if found else None


def is_ours(token: dict) -> bool:
    """A token this project made (and may delete when it is no longer wanted)."""
    return str(token.get("Description", "")).startswith("cabify ")


def cluster(hosts: list[str], port: int) -> str:
    """The name the secrets keep a Consul cluster's management token under: the hosts
    and port the master reaches it at (``127.0.0.1:8500``)."""
    return f"{','.join(hosts)}:{port}"


def management(secrets: dict | None, name: str) -> str | None:
    """The management token of cluster NAME (see cluster), if the master has one."""
    return (((secrets or {}).get("management") or {}).get(name) or {}).get("SecretID")


def redact(text: str, secrets: dict | None) -> str:
    """TEXT without any management token of SECRETS in it: for errors and logs."""
    for kept in ((secrets or {}).get("management") or {}).values():
        if kept.get("SecretID"):
            text = text.replace(kept["SecretID"], "<management token>")
    return text
