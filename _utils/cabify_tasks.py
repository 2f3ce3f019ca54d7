"""
Work a release runs in the background while it goes on (an old replica's SIGTERM and
removal: it serves nothing any more, and the next batch need not wait for its process
to exit), waited for before the release depends on it.

Also: whether a lock holder's process is gone (:py:func:`process_gone`).

Each task runs in a thread of its own with a copy of the caller's context (Salt's
loader dunders live in context variables). ``wait`` joins them and raises every error.
"""

from __future__ import annotations

import contextvars
import os
import threading

from salt.exceptions import CommandExecutionError


class Background:
    """Tasks started with :py:meth:`start`, their errors raised by :py:meth:`wait`."""

    def __init__(self):
        self.threads: list[threading.Thread] = []
        self.errors: list[str] = []

    def start(self, what: str, func, *args, **kwargs) -> None:
        """Run FUNC(*ARGS, **KWARGS) in the background; a failure is kept as "WHAT: error"."""

        def run() -> None:
            try:
                func(*args, **kwargs)
            except Exception as err:  # noqa: BLE001 - raised by wait()
                self.errors.append(f"{what}: {err}")

        thread = threading.Thread(target=contextvars.copy_context().run, args=(run,), daemon=True)
        thread.start()
        self.threads.append(thread)

    def wait(self) -> None:
        """Wait for every task started so far; raise naming each one that failed."""
        threads, self.threads = self.threads, []
        for thread in threads:
            thread.join()
        errors, self.errors = self.errors, []
        if errors:
            raise CommandExecutionError("; ".join(errors))


def background() -> Background:
    """A new set of background tasks (the loader gives functions, not classes)."""
    return Background()


def process_gone(pid: object) -> bool:
    """True when no process PID runs on this host any more (a lock holder that died);
    False when it runs, or when that cannot be told."""
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except (OSError, TypeError, ValueError):
        return False
    return False
