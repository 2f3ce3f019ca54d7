"""
Read this host's own apt sources, so that formulas never hard-code a mirror host.

Consul comes from Debian 11's archive on the same mirror the host already uses for
Debian 12; :py:func:`debian_mirror` tells which mirror that is.
"""

from __future__ import annotations

import glob
import os

from salt.exceptions import CommandExecutionError

__virtualname__ = "apt_source"

SOURCES_DIR = "/etc/apt/sources.list.d"
SOURCES_LIST = "/etc/apt/sources.list"


def __virtual__():
    if not os.path.isdir("/etc/apt"):
        return (False, "apt_source: this host has no /etc/apt (not a Debian-family system)")
    return __virtualname__


def _deb822_uris(text: str) -> list[tuple[str, list[str]]]:
    """(URI, suites) of each deb stanza of a deb822 .sources file."""
    found = []
    for stanza in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line.startswith("#") or ":" not in line or line[:1].isspace():
                continue
            key, _, value = line.partition(":")
            fields[key.strip().lower()] = value.strip()
        if "deb" in fields.get("types", "").split() and fields.get("enabled", "yes") != "no":
            suites = fields.get("suites", "").split()
            found.extend((uri, suites) for uri in fields.get("uris", "").split())
    return found


def _one_line_uris(text: str) -> list[tuple[str, list[str]]]:
    """(URI, [suite]) of each ``deb`` line of a sources.list file."""
    found = []
    for line in text.splitlines():
        words = [w for w in line.split() if not w.startswith("[")] if line.startswith("deb ") else []
        if len(words) >= 3:
            found.append((words[1], [words[2]]))
    return found


def sources(exclude: str = "") -> list[dict]:
    """
    List the host's apt sources as ``{"file", "uri", "suites"}``, skipping files whose
    name contains EXCLUDE (this project's own source files).

    CLI Example:

    .. code-block:: bash

        salt-call apt_source.sources
    """
    found = []
    paths = sorted(glob.glob(os.path.join(SOURCES_DIR, "*.sources")))
    paths += [*sorted(glob.glob(os.path.join(SOURCES_DIR, "*.list"))), SOURCES_LIST]
    for path in paths:
        if (exclude and exclude in os.path.basename(path)) or not os.path.isfile(path):
            continue
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
        parse = _deb822_uris if path.endswith(".sources") else _one_line_uris
        found.extend({"file": path, "uri": uri, "suites": suites} for uri, suites in parse(text))
    return found


def debian_mirror(exclude: str = "cabify") -> str:
    """
    Return the URI of the Debian archive this host installs from (the first source
    with a plain release suite such as ``bookworm``, not ``-security`` or ``-updates``).

    CLI Example:

    .. code-block:: bash

        salt-call apt_source.debian_mirror
    """
    for source in sources(exclude=exclude):
        if any("-" not in suite for suite in source["suites"]) and "security" not in source["uri"]:
            return source["uri"].rstrip("/")
    raise CommandExecutionError(
        f"no Debian archive found in {SOURCES_DIR}/*.sources or {SOURCES_LIST}: "
        "cannot tell which mirror to take Debian 11's consul from"
    )
