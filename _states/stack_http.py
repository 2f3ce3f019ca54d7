"""
Wait for a local service to answer over HTTP: a readiness gate after a (re)start.

Unlike ``http.wait_for_successful_query``, it tells the truth under ``test=True``: it
looks once and reports what it sees, without waiting.

.. code-block:: yaml

    consul-service-leader-elected:
      stack_http.answering:
        - name: http://127.0.0.1:8500/v1/status/leader
        - match: '"[^"]+:[0-9]+"'
        - timeout: 60
"""

from __future__ import annotations

import re
import time
import urllib.error
import urllib.request

__virtualname__ = "stack_http"


def __virtual__():
    return __virtualname__


def _look(url: str, match: str, codes: tuple[int, ...] = (200,)) -> str | None:
    """None when URL answers one of CODES with a body matching MATCH, else what it answered."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - local URL
            body = response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as err:
        if err.code not in codes:
            return f"HTTP {err.code}"
        body = err.read().decode("utf-8", "replace")
    except (urllib.error.URLError, OSError) as err:
        return str(getattr(err, "reason", err))
    return None if re.search(match, body) else f"answered {body[:200]!r}"


def answering(
    name: str, match: str = ".", timeout: float = 60, interval: float = 0.5, codes: list[int] | None = None
) -> dict:
    """
    Succeed, with no changes, once URL ``name`` answers 200 (or one of ``codes``) with a
    body matching the regular expression ``match``; fail after ``timeout`` seconds
    saying what it last got.
    """
    ret = {"name": name, "changes": {}, "result": True, "comment": ""}
    codes = tuple(int(code) for code in codes or [200])
    seen = _look(name, match, codes)
    if __opts__["test"]:
        ret["result"] = True if seen is None else None
        ret["comment"] = (
            f"{name} answers" if seen is None else f"Would wait up to {timeout}s for {name} ({seen})"
        )
        return ret
    deadline = time.monotonic() + timeout
    while seen is not None and time.monotonic() < deadline:
        time.sleep(interval)
        seen = _look(name, match, codes)
    if seen is not None:
        ret["result"] = False
        ret["comment"] = f"{name} did not answer as expected within {timeout}s: {seen}"
    else:
        ret["comment"] = f"{name} answers"
    return ret
