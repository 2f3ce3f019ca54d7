"""
The host lock of a pool: one change of a host's pool at a time (converge, heal, a
release, a recovery), whoever runs it. A second one waits for the first instead of
undoing its work half-way. It is a file lock (``/run/cabify/<pool>.lock``), let go
when its holder's process ends, however it ends.

A release takes it once for its whole run and passes its ``fence`` to what it calls;
functions that take the lock themselves skip it when given a fence.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time

from salt.exceptions import CommandExecutionError

LOCK_DIR = "/run/cabify"


@contextlib.contextmanager
def hold(pool: str, timeout: float = 300):
    """Hold POOL's host lock for the block; raise CommandExecutionError after TIMEOUT seconds of waiting."""
    os.makedirs(LOCK_DIR, exist_ok=True)
    with open(os.path.join(LOCK_DIR, f"{pool}.lock"), "w", encoding="utf-8") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise CommandExecutionError(
                        f"pool {pool} is busy on this host: another change held it for {timeout:g}s"
                    ) from None
                time.sleep(0.1)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
