"""
Retries for the paths that must go on: a revert, an abort, a cleanup. Each action is
tried a few times with a short back-off; what keeps failing is raised (``retried``) or
logged and passed over (``quietly``), so that one stuck step never leaves the rest
undone.
"""

from __future__ import annotations

import logging
import time
from typing import Any

log = logging.getLogger(__name__)


def retried(what: str, func, *args: Any, attempts: int = 3, **kwargs: Any) -> Any:
    """FUNC(*ARGS, **KWARGS), tried up to ATTEMPTS times; the last error is raised.
    WHAT names the action in the log."""
    for attempt in range(1, attempts + 1):
        try:
            return func(*args, **kwargs)
        except Exception as err:
            log.warning("cabify: %s failed (attempt %s of %s): %s", what, attempt, attempts, err)
            if attempt == attempts:
                raise
            time.sleep(0.5 * attempt)
    return None


def quietly(what: str, func, *args: Any, **kwargs: Any) -> Any:
    """:func:`retried`, but a last failure is logged and None returned: for
    bookkeeping and cleanups that must not hide the outcome they follow."""
    try:
        return retried(what, func, *args, **kwargs)
    except Exception as err:  # noqa: BLE001 - logged; the caller's own outcome stands
        log.error("cabify: %s failed for good: %s", what, err)
        return None
