"""Progress on stderr: stages (loading, encoding, decoding) and a per-step bar with the ETA.

Library code reports through a :class:`Progress`; commands choose :class:`RichProgress` (interactive),
or :class:`NullProgress` (tests, ``--json``, worker processes).
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager


class Progress:
    """Interface: ``stage(name)`` as a context manager, ``steps(total, label)`` returning an advance callback."""

    @contextmanager
    def stage(self, name: str):
        yield

    def steps(self, total: int, label: str):
        return lambda n=1: None

    def done_steps(self) -> None:
        pass

    def message(self, text: str) -> None:
        pass

    def warning(self, text: str) -> None:
        """Warnings are shown even when progress is not."""
        print(text, file=sys.stderr)


class NullProgress(Progress):
    pass


class QuietProgress(NullProgress):
    """Nothing at all, not even warnings: the torchrun ranks other than 0, which leave the display to rank 0."""

    def warning(self, text: str) -> None:
        pass


class NotesDropped(NullProgress):
    """``--quiet``: no progress, no stage lines and no ``note:`` lines; warnings still print."""

    def warning(self, text: str) -> None:
        if not text.startswith("note:"):
            super().warning(text)


class RichProgress(Progress):
    """Stage lines with their durations, and one rich progress bar for the denoising steps."""

    def __init__(self, console=None):
        from rich.console import Console

        self.console = console or Console(stderr=True)
        self._bar = None

    @contextmanager
    def stage(self, name: str):
        t0 = time.perf_counter()
        with self.console.status(f"{name}..."):
            yield
        self.console.print(f"[green]done[/green] {name} ({time.perf_counter() - t0:.1f} s)")

    def steps(self, total: int, label: str):
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as Bar

        self._bar = Bar(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        TextColumn("ETA"), TimeRemainingColumn(), console=self.console, transient=False)
        self._bar.start()
        task = self._bar.add_task(label, total=total)
        return lambda n=1: self._bar.advance(task, n)

    def done_steps(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def message(self, text: str) -> None:
        self.console.print(text)

    def warning(self, text: str) -> None:
        self.console.print(f"[yellow]{text}[/yellow]")


def stderr_is_interactive() -> bool:
    return sys.stderr.isatty()
