"""
Validate the merged data of this project's formulas before anything is changed.

Each formula's ``map.jinja`` merges ``defaults.yaml``, OS data and pillar once; the
formula's first state hands that merged map to :py:func:`check` (through the
``stack_pillar.valid`` state), and every other state of the formula requires it. Bad
pillar therefore fails the run with a message that names the pillar key and the reason,
and nothing that was running is touched.

The rules are data (``RULES``): a pillar path, a kind and, for some kinds, bounds.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

from salt.exceptions import CommandExecutionError

__virtualname__ = "stack_pillar"

_DATACENTER = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
_SERVICE_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_DNS_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,252}$")
_SIZE = re.compile(r"^[0-9]+[kmg]?$")
_IMAGE_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_IMAGE_REF = re.compile(r"^[a-z0-9][a-z0-9._/:-]*(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?$")
_HAPROXY_TIME = re.compile(r"^[0-9]+(us|ms|s|m|h|d)?$")
_LISTEN = re.compile(r"^[0-9A-Za-z.-]*:[0-9]{1,5}$")
_REGISTRY = re.compile(r"^[A-Za-z0-9.-]+(:[0-9]{1,5})?$")
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,62}$")

# path -> (kind, required). Paths are relative to the formula's map ("consul:config:...").
RULES: dict[str, dict[str, tuple[str, bool]]] = {
    "common": {
        "pkgs": ("list_of_str", True),
        "apt:cache_valid_time": ("positive_int", True),
        "apt:man_db_auto_update": ("bool", True),
        "unattended_upgrades:enabled": ("bool", True),
        "unattended_upgrades:origins": ("list_of_str", True),
        "logrotate:paths": ("list_of_str", True),
        "logrotate:rotate": ("positive_int", True),
        "logrotate:frequency": ("logrotate_frequency", True),
        "service:name": ("str", True),
        "service:enable": ("bool_or_null", False),
    },
    "docker": {
        "pkg": ("str", True),
        "service:name": ("str", True),
        "service:enable": ("bool_or_null", False),
        "service:init_script": ("bool", True),
        "daemon_json": ("mapping", True),
        "daemon_json:log-driver": ("str", True),
        "daemon_json:log-opts": ("mapping", False),
        "daemon_json:log-opts:max-size": ("size", False),
        "daemon_json:log-opts:max-file": ("positive_int_str", False),
        "daemon_json:live-restore": ("bool", True),
        "start_timeout": ("positive_int", True),
    },
    "consul": {
        "install:method": ("consul_install_method", True),
        "install:suite": ("str", True),
        "install:url": ("url", False),
        "install:sha256": ("sha256", False),
        "config": ("mapping", True),
        "config:datacenter": ("datacenter", True),
        "config:node_name": ("dns_name", False),
        "config:server": ("bool", True),
        "config:bootstrap_expect": ("positive_int", False),
        "config:bind_addr": ("ip", True),
        "config:client_addr": ("ip_list_str", True),
        "config:data_dir": ("abs_path", True),
        "config:ports": ("mapping", True),
        "config:ports:http": ("port", True),
        "config:ports:dns": ("port", True),
        "config:ports:server": ("port", False),
        "config:ports:serf_lan": ("port", False),
        "config:ports:serf_wan": ("port", False),
        "config:dns_config": ("mapping", False),
        "config:ui": ("bool", False),
        "config:retry_join": ("list_of_str", False),
        "api:host": ("ip", True),
        "service:name": ("str", True),
        "service:user": ("str", True),
        "service:enable": ("bool_or_null", False),
        "service:init_script": ("bool", True),
        "config:log_file": ("abs_path", True),
        "config:acl:default_policy": ("acl_policy", False),
        "config:acl:down_policy": ("acl_down_policy", False),
        "config:acl:tokens:agent": ("uuid", False),
        "api:token": ("uuid", False),
        "gossip:key": ("gossip_key", False),
        "tls:dir": ("abs_path", True),
        "tls:ca": ("pem_certificate", False),
        "tls:cert": ("pem_certificate", False),
        "tls:key": ("pem_key", False),
        "start_timeout": ("positive_int", True),
    },
    "cabify": {
        "image:repository": ("image_name", True),
        "image:base": ("image_ref", True),
        "image:build_base": ("bool", True),
        "image:suite": ("str", True),
        "image:source_dir": ("abs_path", True),
        "image:keep": ("positive_int", True),
        "image:registry": ("registry_address", False),
        "image:push_registry": ("registry_address", True),
        "build:versions": ("list_of_image_tags", True),
        "build:push": ("bool", True),
        "publish:address": ("ip", False),
        "pool": ("mapping", True),
        "pools": ("pool_mapping", True),
    },
    "registry": {
        "pkg": ("str", True),
        "config_file": ("abs_path", True),
        "service:name": ("str", True),
        "service:enable": ("bool_or_null", False),
        "config": ("mapping", True),
        "config:http:addr": ("listen_address", True),
        "config:storage:filesystem:rootdirectory": ("abs_path", True),
        "service:user": ("str", True),
        "service:init_script": ("bool", True),
    },
    "keepalived": {
        "pkg": ("str", True),
        "config_file": ("abs_path", True),
        "service:name": ("str", True),
        "service:enable": ("bool_or_null", False),
        "service:init_script": ("bool", True),
        "vrrp:name": ("name", True),
        "vrrp:interface": ("str", True),
        "vrrp:virtual_router_id": ("vrid", True),
        "vrrp:virtual_ipaddresses": ("list_of_ip_prefixes", True),
        "vrrp:priority": ("vrrp_priority", True),
        "vrrp:version": ("vrrp_version", True),
        "vrrp:advert_int": ("positive_number", True),
        "vrrp:preempt_delay": ("non_negative_int", False),
        "vrrp:unicast_src_ip": ("ip", False),
        "vrrp:unicast_peers": ("list_of_ips", True),
        "vrrp:auth_pass": ("vrrp_password", False),
        "check:script": ("abs_path", True),
        "check:pidfile": ("abs_path", True),
        "check:interval": ("positive_int", True),
        "check:fall": ("positive_int", True),
        "check:rise": ("positive_int", True),
        "start_timeout": ("positive_int", True),
    },
    "firewall": {
        "pkg": ("str", True),
        "table": ("name", True),
        "rules_file": ("abs_path", True),
        "loaded_marker": ("abs_path", True),
        "sources": ("mapping", True),
        "management": ("list_of_ports", True),
        "roles": ("mapping", True),
        "forward": ("mapping", True),
    },
    "haproxy": {
        "pkg": ("str", True),
        "config_file": ("abs_path", True),
        "service:name": ("str", True),
        "service:enable": ("bool_or_null", False),
        "frontend:bind": ("ip", True),
        "stats:bind": ("ip", True),
        "stats:port": ("port", True),
        "runtime_api:socket": ("abs_path", True),
        "resolvers:nameserver": ("ip", True),
        "resolvers:port": ("port", True),
        "resolvers:interval": ("haproxy_time", True),
        "resolvers:hold_valid": ("haproxy_time", True),
        "resolvers:hold_unreachable": ("haproxy_time", True),
        "server_state:file": ("abs_path", True),
        "request_log:ring": ("dns_name", True),
        "request_log:size": ("positive_int", True),
        "global:maxconn": ("positive_int", True),
        "global:extra": ("list_of_str", True),
        "defaults:timeouts": ("mapping", True),
        "defaults:extra": ("list_of_str", True),
        "backend": ("mapping", True),
        "backends": ("pool_mapping", True),
    },
}

# Rules of each member of a mapping of pools: cabify:pool and cabify:pools:<name> (a
# pool's settings), haproxy:backend and haproxy:backends:<name> (its backend).
MEMBER_RULES: dict[str, dict[str, tuple[str, bool]]] = {
    "cabify": {
        "version": ("image_tag", True),
        "replicas": ("non_negative_int", True),
        "env": ("env_mapping", True),
        "resources": ("mapping", True),
        "resources:memory": ("size", False),
        "resources:cpus": ("positive_number", False),
        "resources:pids": ("positive_int", False),
        "network": ("network_name", False),
        "healthy_timeout": ("positive_int", True),
        "drain_timeout": ("non_negative_int", True),
        "registration:deregister_critical_after": ("haproxy_time", True),
        "release:strategy": ("release_strategy", True),
        "release:max_parallel": ("positive_int", True),
        "release:min_healthy_time": ("non_negative_int", True),
        "release:healthy_deadline": ("positive_int", True),
        "release:auto_revert": ("bool", True),
        "release:lock_ttl": ("lock_ttl", True),
        "release:timeout": ("positive_int", True),
        "release:host_by_host": ("bool", True),
        "release:webhooks": ("list_of_str", True),
        "canary:replicas": ("positive_int", True),
        "canary:steps": ("canary_steps", True),
        "canary:analysis:max_error_rate": ("fraction", True),
        "canary:analysis:max_p99_ms": ("positive_number", True),
        "canary:analysis:min_requests": ("non_negative_int", True),
        "canary:analysis:interval": ("positive_number", True),
        "canary:analysis:inconclusive_limit": ("non_negative_int", True),
        "canary:auto_promote": ("bool", True),
        "canary:promote_timeout": ("positive_int", True),
    },
    "haproxy": {
        "port": ("port", True),
        "slots": ("positive_int", False),
        "replicas": ("non_negative_int", True),
        "surge": ("non_negative_int", True),
        "canary_slots": ("positive_int", True),
        "health_path": ("url_path", True),
        "timeout_connect": ("haproxy_time", True),
        "timeout_server": ("haproxy_time", True),
        "retries": ("non_negative_int", True),
        "retry_on": ("retry_on", True),
        "redispatch": ("int", True),
        "extra": ("list_of_str", True),
    },
}
MEMBERS = {"cabify": ("pool", "pools"), "haproxy": ("backend", "backends")}

# HAProxy's retry-on keywords (2.6).
_RETRY_ON = {
    "none", "conn-failure", "empty-response", "junk-response", "response-timeout", "0rtt-rejected",
    "all-retryable-errors", "401", "403", "404", "408", "425", "500", "501", "502", "503", "504",
}  # fmt: skip

_MISSING = object()


# Consul's ACL settings and the secrets the master gives (a secret's value is never
# echoed in an error: its kind is in _SECRET_KINDS).
_CONSUL_SECRET_KINDS = {
    "acl_policy": (r"allow|deny", "must be 'allow' or 'deny'"),
    "acl_down_policy": (
        r"allow|deny|extend-cache|async-cache",
        "must be allow, deny, extend-cache or async-cache",
    ),
    "uuid": (r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", "must be a token's UUID"),
    "gossip_key": (
        r"[A-Za-z0-9+/]{43}=|[A-Za-z0-9+/]{32}|[A-Za-z0-9+/]{22}==",
        "must be 16, 24 or 32 bytes, base64",
    ),
    "pem_certificate": (
        r"-----BEGIN CERTIFICATE-----.+-----END CERTIFICATE-----",
        "must be a PEM certificate",
    ),
    "pem_key": (
        r"-----BEGIN [A-Z ]*PRIVATE KEY-----.+-----END [A-Z ]*PRIVATE KEY-----",
        "must be a PEM private key",
    ),
}


_SECRET_KINDS = {"uuid", "gossip_key", "pem_certificate", "pem_key"}


def _shown(kind: str, value: Any) -> str:
    """How an error shows a bad VALUE: itself, or that it is a secret."""
    return "a secret: its value is not shown" if kind in _SECRET_KINDS else f"got {value!r}"


def _canary_steps(value: Any) -> str | None:
    if not isinstance(value, list) or not value:
        return "must be a non-empty list of {weight, pause} mappings"
    for number, step in enumerate(value, start=1):
        if not isinstance(step, dict) or set(step) != {"weight", "pause"}:
            return f"step {number} must be a mapping with exactly weight and pause"
        weight, pause = step["weight"], step["pause"]
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 < weight < 100:
            return f"step {number}: weight must be a percentage above 0 and below 100"
        if isinstance(pause, bool) or not isinstance(pause, (int, float)) or pause < 0:
            return f"step {number}: pause must be seconds, 0 or more"
    return None


def __virtual__():
    return __virtualname__


def _retry_on(value: Any) -> str | None:
    if not isinstance(value, str) or not value.split():
        return "must be HAProxy retry-on keywords separated by spaces"
    unknown = [w for w in value.split() if w not in _RETRY_ON]
    return f"has unknown retry-on keywords {unknown}" if unknown else None


def _lookup(data: Any, path: str) -> Any:
    for part in path.split(":"):
        if not isinstance(data, dict) or part not in data:
            return _MISSING
        data = data[part]
    return data


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _problem(kind: str, value: Any) -> str | None:  # noqa: PLR0911, PLR0912, PLR0915 - one branch a kind
    """Return why VALUE is not of KIND, or None when it is."""
    if kind == "str":
        return None if isinstance(value, str) and value else "must be a non-empty string"
    if kind == "bool":
        return None if isinstance(value, bool) else "must be true or false"
    if kind == "bool_or_null":
        return None if value is None or isinstance(value, bool) else "must be true, false or null"
    if kind == "image_tag":
        ok = isinstance(value, (str, int)) and not isinstance(value, bool) and _IMAGE_TAG.match(str(value))
        return None if ok else "must be a Docker tag: letters, digits, '_', '.', '-' (at most 128)"
    if kind == "listen_address":
        ok = isinstance(value, str) and _LISTEN.match(value) and 0 < int(value.rsplit(":", 1)[1]) < 65536
        return None if ok else "must be [address]:port, such as :5000 or 127.0.0.1:5000"
    if kind == "list_of_image_tags":
        ok = isinstance(value, list) and all(_problem("image_tag", v) is None for v in value)
        return None if ok else "must be a list of versions (Docker tags)"
    if kind == "registry_address":
        ok = isinstance(value, str) and _REGISTRY.match(value)
        return None if ok else "must be a registry's host[:port], such as 10.213.0.1:5000"
    if kind == "image_ref":
        ok = isinstance(value, str) and _IMAGE_REF.match(value)
        return None if ok else "must be an image reference such as cabify-base:bookworm"
    if kind == "env_mapping":
        if not isinstance(value, dict):
            return "must be a mapping of variable names to values"
        bad = [
            k
            for k, v in value.items()
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(k)) or isinstance(v, (dict, list))
        ]
        return f"has bad entries {bad}: names are identifiers, values scalars" if bad else None
    if kind == "positive_number":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
        return None if ok else "must be a number above 0"
    if kind == "mapping":
        return None if isinstance(value, dict) else "must be a mapping (key: value)"
    if kind == "list_of_str":
        if not isinstance(value, list):
            return "must be a list"
        return None if all(isinstance(v, str) for v in value) else "must be a list of strings"
    if kind in ("port", "positive_int", "non_negative_int"):
        if not _is_int(value):
            return "must be an integer"
        low = {"port": 1, "positive_int": 1, "non_negative_int": 0}[kind]
        high = 65535 if kind == "port" else None
        if value < low or (high is not None and value > high):
            return f"must be between {low} and {high}" if high else f"must be at least {low}"
        return None
    if kind == "positive_int_str":
        ok = (_is_int(value) or isinstance(value, str)) and str(value).isdigit() and int(value) > 0
        return None if ok else "must be a positive whole number"
    if kind == "ip":
        try:
            ipaddress.ip_address(str(value))
        except ValueError:
            return "must be an IP address"
        return None
    if kind == "vrid":
        return None if _is_int(value) and 1 <= value <= 255 else "must be a whole number from 1 to 255"
    if kind == "vrrp_priority":
        return None if _is_int(value) and 1 <= value <= 254 else "must be a whole number from 1 to 254"
    if kind == "vrrp_version":
        return None if value in (2, 3) else "must be 2 or 3"
    if kind == "vrrp_password":
        ok = isinstance(value, str) and 0 < len(value) <= 8 and value.isprintable() and " " not in value
        return None if ok else "must be 1 to 8 printable characters, no spaces"
    if kind == "list_of_ips":
        ok = isinstance(value, list) and all(_problem("ip", v) is None for v in value)
        return None if ok else "must be a list of IP addresses"
    if kind == "list_of_ip_prefixes":
        if not isinstance(value, list) or not value:
            return "must be a non-empty list of addresses with their prefix, such as 10.213.0.100/24"
        for item in value:
            try:
                ipaddress.ip_interface(str(item))
            except ValueError:
                return f"{item!r} is not an address with its prefix, such as 10.213.0.100/24"
        return None
    if kind == "ipv4_network":
        try:
            ipaddress.IPv4Network(str(value), strict=False)
        except ValueError:
            return "must be an IPv4 address or network"
        return None
    if kind == "name":
        ok = isinstance(value, str) and _NAME.match(value)
        return None if ok else "must be letters, digits or '_' (starting with a letter, at most 63)"
    if kind == "list_of_ports":
        ok = isinstance(value, list) and all(_problem("port", v) is None for v in value)
        return None if ok else "must be a list of ports (1 to 65535)"
    if kind == "ip_list_str":
        if not isinstance(value, str):
            return "must be a string of space-separated IP addresses"
        return next((_problem("ip", v) for v in value.split() if _problem("ip", v)), None)
    if kind == "datacenter":
        ok = isinstance(value, str) and _DATACENTER.match(value)
        return None if ok else "must be lower-case letters, digits, '-' or '_' (at most 63)"
    if kind == "dns_name":
        ok = isinstance(value, str) and _DNS_NAME.match(value)
        return None if ok else "must be a DNS name"
    if kind == "service_name":
        ok = isinstance(value, str) and _SERVICE_NAME.match(value)
        return None if ok else "must be lower-case letters, digits or '-'"
    if kind == "abs_path":
        return None if isinstance(value, str) and value.startswith("/") else "must be an absolute path"
    if kind == "url_path":
        return None if isinstance(value, str) and value.startswith("/") else "must start with '/'"
    if kind == "url":
        ok = isinstance(value, str) and re.match(r"^(https?|ftp|file|salt)://\S+$", value)
        return None if ok else "must be an http(s)://, ftp://, file:// or salt:// URL"
    if kind in _CONSUL_SECRET_KINDS:
        ok = isinstance(value, str) and re.fullmatch(_CONSUL_SECRET_KINDS[kind][0], value.strip(), re.S)
        return None if ok else _CONSUL_SECRET_KINDS[kind][1]
    if kind == "sha256":
        ok = isinstance(value, str) and re.fullmatch(r"[0-9a-f]{64}", value)
        return None if ok else "must be 64 lower-case hex digits"
    if kind == "size":
        return None if isinstance(value, str) and _SIZE.match(value) else "must look like 10m"
    if kind == "haproxy_time":
        ok = isinstance(value, (str, int)) and _HAPROXY_TIME.match(str(value))
        return None if ok else "must be an HAProxy time such as 30s or 500ms"
    if kind == "logrotate_frequency":
        ok = value in ("daily", "weekly", "monthly")
        return None if ok else "must be daily, weekly or monthly"
    if kind == "release_strategy":
        return None if value in ("rolling", "canary") else "must be 'rolling' or 'canary'"
    if kind == "fraction":
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 1
        return None if ok else "must be a number from 0 to 1"
    if kind == "canary_steps":
        return _canary_steps(value)
    if kind == "retry_on":
        return _retry_on(value)
    if kind == "int":
        return None if _is_int(value) else "must be an integer"
    if kind == "lock_ttl":
        ok = _is_int(value) and 10 <= value <= 86400
        return None if ok else "must be whole seconds from 10 to 86400 (Consul's session TTL bounds)"
    if kind == "pool_mapping":
        if not isinstance(value, dict):
            return "must be a mapping of names to settings"
        bad = [k for k in value if not isinstance(k, str) or not _SERVICE_NAME.match(k)]
        return f"has bad names {bad}: lower-case letters, digits or '-'" if bad else None
    if kind == "network_name":
        ok = value == "" or (isinstance(value, str) and _DNS_NAME.match(value))
        return None if ok else "must be a Docker network name (empty: the pool's name)"
    if kind == "image_name":
        ok = isinstance(value, str) and re.fullmatch(r"[a-z0-9][a-z0-9._/-]*", value)
        return None if ok else "must be an image repository such as cabify-app"
    if kind == "consul_install_method":
        return None if value in ("apt", "url") else "must be 'apt' or 'url'"
    raise ValueError(f"unknown rule kind {kind!r}")


def problems(formula: str, data: dict) -> list[str]:
    """
    List what is wrong with a formula's merged data, one "pillar key: reason" a line.

    CLI Example:

    .. code-block:: bash

        salt-call stack_pillar.problems consul '{"config": {"ports": {"dns": "x"}}}'
    """
    if formula not in RULES:
        raise CommandExecutionError(f"no pillar rules for formula {formula!r}")
    if not isinstance(data, dict):
        return [f"{formula}: must be a mapping, got {type(data).__name__}"]
    found = []
    for path, (kind, required) in RULES[formula].items():
        value = _lookup(data, path)
        if value is _MISSING or value is None:
            if required:
                found.append(f"{formula}:{path}: is required")
            continue
        reason = _problem(kind, value)
        if reason:
            found.append(f"{formula}:{path}: {reason} ({_shown(kind, value)})")
    found.extend(_member_problems(formula, data))
    found.extend(_cross_checks(formula, data))
    return found


def _merged(base: Any, over: Any) -> Any:
    """OVER merged recursively over BASE (mappings merge, anything else replaces)."""
    if not isinstance(base, dict) or not isinstance(over, dict):
        return over
    return {**base, **{k: _merged(base.get(k), v) for k, v in over.items()}}


def _member_problems(formula: str, data: dict) -> list[str]:
    """The rules of MEMBER_RULES on the defaults member and on each named member."""
    if formula not in MEMBERS:
        return []
    single, plural = MEMBERS[formula]
    base = _lookup(data, single)
    members = {single: base}
    named = _lookup(data, plural)
    if isinstance(named, dict):
        # Each named member as the formula's map.jinja sees it: over the defaults member.
        for name, member in named.items():
            if member is not None:
                members[f"{plural}:{name}"] = _merged(base, member)
    found = []
    for prefix, member in members.items():
        if not isinstance(member, dict):
            continue
        for path, (kind, required) in MEMBER_RULES[formula].items():
            value = _lookup(member, path)
            if value is _MISSING or value is None:
                if required and prefix != single:
                    found.append(f"{formula}:{prefix}:{path}: is required")
                continue
            reason = _problem(kind, value)
            if reason:
                found.append(f"{formula}:{prefix}:{path}: {reason} (got {value!r})")
    return found


def _cross_checks(formula: str, data: dict) -> list[str]:
    found = []
    if formula == "consul" and _lookup(data, "install:method") == "url":
        for key in ("url", "sha256"):
            if _lookup(data, f"install:{key}") in (_MISSING, None, ""):
                found.append(f"consul:install:{key}: is required when consul:install:method is 'url'")
    if formula == "consul":
        expect = _lookup(data, "config:bootstrap_expect")
        if _is_int(expect) and _lookup(data, "config:server") is False:
            found.append(
                "consul:config:bootstrap_expect: only a server can set it (consul:config:server is false)"
            )
    if formula == "firewall":
        found.extend(_firewall_problems(data))
    if formula == "keepalived":
        found.extend(_keepalived_problems(data))
    if formula == "haproxy" and isinstance(_lookup(data, "backends"), dict):
        seen = {_lookup(data, "stats:port"): "haproxy:stats:port"}
        for name, backend in sorted(data["backends"].items()):
            port = _lookup(backend, "port") if isinstance(backend, dict) else None
            if port in seen and _is_int(port):
                found.append(f"haproxy:backends:{name}:port: {port} is taken by {seen[port]}")
            seen.setdefault(port, f"haproxy:backends:{name}:port")
            found.extend(_slot_problems(name, _merged(data.get("backend") or {}, backend)))
    return found


def _keepalived_problems(data: dict) -> list[str]:
    """Unicast adverts need a source address; VRRP 2 counts adverts in whole seconds
    and alone has authentication."""
    found = []
    vrrp = data.get("vrrp") if isinstance(data.get("vrrp"), dict) else {}
    if vrrp.get("unicast_peers") and not vrrp.get("unicast_src_ip"):
        found.append("keepalived:vrrp:unicast_src_ip: is required with keepalived:vrrp:unicast_peers")
    advert = vrrp.get("advert_int")
    if vrrp.get("version") == 2 and isinstance(advert, (int, float)) and advert != int(advert):
        found.append("keepalived:vrrp:advert_int: must be whole seconds with keepalived:vrrp:version 2")
    if vrrp.get("auth_pass") and vrrp.get("version") != 2:
        found.append(
            "keepalived:vrrp:auth_pass: needs keepalived:vrrp:version 2 (VRRP 3 has no authentication)"
        )
    return found


def _firewall_problems(data: dict) -> list[str]:
    """Each source is a list of IPv4 addresses or networks; each rule of
    firewall:roles and firewall:forward names what it is for, a known proto, its ports
    (tcp, udp) and a source that exists."""
    found = []
    sources = data.get("sources") if isinstance(data.get("sources"), dict) else {}
    for name, addresses in sorted(sources.items()):
        if _problem("name", name):
            found.append(f"firewall:sources:{name}: the name {_problem('name', name)}")
        if not isinstance(addresses, list) or any(_problem("ipv4_network", a) for a in addresses):
            found.append(
                f"firewall:sources:{name}: must be a list of IPv4 addresses or networks (got {addresses!r})"
            )
    for section in ("roles", "forward"):
        roles = data.get(section) if isinstance(data.get(section), dict) else {}
        for role, rules in sorted(roles.items()):
            for name, rule in sorted((rules or {}).items()) if isinstance(rules, dict) else [(None, rules)]:
                key = f"firewall:{section}:{role}" + (f":{name}" if name else "")
                found.extend(f"{key}: {reason}" for reason in _firewall_rule(rule, sources, section))
    return found


def _firewall_rule(rule: Any, sources: dict, section: str) -> list[str]:
    if rule is None:
        return []
    if not isinstance(rule, dict):
        return [f"must be a mapping of what, proto, ports and from (got {rule!r})"]
    found = []
    protos = ("tcp", "udp") if section == "forward" else ("tcp", "udp", "vrrp")
    if rule.get("proto") not in protos:
        found.append(f"proto must be one of {', '.join(protos)} (got {rule.get('proto')!r})")
    if rule.get("proto") in ("tcp", "udp") and (
        not isinstance(rule.get("ports"), list)
        or not rule["ports"]
        or _problem("list_of_ports", rule["ports"])
    ):
        found.append(f"ports must be a non-empty list of ports (got {rule.get('ports')!r})")
    if rule.get("from") != "any" and rule.get("from") not in sources:
        found.append(
            f"from must be 'any' or one of firewall:sources ({', '.join(sorted(sources))}), "
            f"got {rule.get('from')!r}"
        )
    if rule.get("listening") not in (None, True, False):
        found.append(f"listening must be true or false (got {rule.get('listening')!r})")
    if not isinstance(rule.get("what"), str) or not rule["what"] or '"' in rule["what"]:
        found.append(f"what must say what the rule is for, without double quotes (got {rule.get('what')!r})")
    return found


def _slot_problems(name: str, backend: Any) -> list[str]:
    """A backend's stable slots hold the pool's replicas (fleet-wide) plus a release's
    surge: with fewer, a release would wait for a slot that never comes."""
    if not isinstance(backend, dict):
        return []
    slots, replicas, surge = (backend.get(k) for k in ("slots", "replicas", "surge"))
    if slots is None:
        return [
            f"haproxy:backends:{name}:slots: is empty and cannot be derived: set it, or "
            f"haproxy:backends:{name}:replicas (the pool's replicas on every app host)"
        ]
    if not (_is_int(slots) and _is_int(replicas) and _is_int(surge)) or slots >= replicas + surge:
        return []
    return [
        f"haproxy:backends:{name}:slots: {slots} slots cannot hold the pool's {replicas} replicas "
        f"(haproxy:backends:{name}:replicas) plus {surge} more during a release "
        f"(haproxy:backends:{name}:surge); leave slots empty to have it derived"
    ]


def check(formula: str, data: dict) -> bool:
    """
    Raise an error naming every bad pillar key of a formula's merged data; True if none.

    CLI Example:

    .. code-block:: bash

        salt-call stack_pillar.check haproxy "$(salt-call --out=json pillar.get haproxy)"
    """
    found = problems(formula, data)
    if found:
        raise CommandExecutionError("bad pillar:\n" + "\n".join(found))
    return True
