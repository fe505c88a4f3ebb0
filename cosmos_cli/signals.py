"""SIGTERM handled like Ctrl-C: the same clean-up, the same report, exit code 143 instead of 130.

Inside :func:`sigterm_as_interrupt`, SIGTERM raises :class:`Terminated`, a ``KeyboardInterrupt``, so every
``except KeyboardInterrupt`` that cleans up after Ctrl-C does the same after ``kill PID`` (a job scheduler's stop, a
container's shutdown). Under torchrun (``WORLD_SIZE`` > 1) the handler is not installed: torchrun itself stops its
processes with SIGTERM when one fails.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from cosmos_cli.errors import CosmosError
from cosmos_cli.launch import launch_env

SIGINT_EXIT = 130  # 128 + SIGINT
SIGTERM_EXIT = 143  # 128 + SIGTERM


class Interrupted(CosmosError):
    """Ctrl-C (exit code 130) or SIGTERM (143) stopped the run; the message says what it left. (Not in
    :mod:`cosmos_cli.errors`, whose errors exit 1 or 2.)"""

    def __init__(self, message: str, hint: str | None = None, exit_code: int = SIGINT_EXIT):
        super().__init__(message, hint)
        self.exit_code = exit_code


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived (raised by the handler :func:`sigterm_as_interrupt` installs)."""


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` in the main thread."""
    if threading.current_thread() is not threading.main_thread() or launch_env().is_parallel:
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def exit_code_for(exc: BaseException | None) -> int:
    return SIGTERM_EXIT if isinstance(exc, Terminated) else SIGINT_EXIT


def signal_name(exc: BaseException | None) -> str:
    return "SIGTERM" if isinstance(exc, Terminated) else "Ctrl-C"
