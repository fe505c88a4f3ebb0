"""Progress on stderr, one vocabulary for every command.

Library code reports through a :class:`Progress` (``stage``, ``steps``, ``message``, ``warning``); commands choose
:class:`RichProgress` (interactive) or :class:`NullProgress` (tests, ``--json``, worker processes), and a batch
forwards the same calls from its workers as events (:mod:`cosmos_cli.batch.display`). Every rich bar on stderr is
made by :func:`rich_bars` (denoising steps, batch items, downloaded bytes); :class:`ByteBars` is the download's.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from typing import Literal

BarKind = Literal["steps", "items", "bytes"]


def rich_bars(kind: BarKind, console=None, *, disable: bool = False):
    """A ``rich.progress.Progress`` on stderr with the columns of ``kind``: ``steps`` (count, elapsed, ETA),
    ``items`` (the same with an ``info`` field, e.g. "2 failed") or ``bytes`` (size, speed, ETA)."""
    from rich import progress as rp
    from rich.console import Console

    ahead = (rp.TextColumn("{task.description}"), rp.BarColumn())
    columns = {
        "steps": (rp.MofNCompleteColumn(), rp.TimeElapsedColumn(), rp.TextColumn("ETA"), rp.TimeRemainingColumn()),
        "items": (rp.MofNCompleteColumn(), rp.TextColumn("{task.fields[info]}"), rp.TimeElapsedColumn(),
                  rp.TextColumn("ETA"), rp.TimeRemainingColumn()),
        "bytes": (rp.DownloadColumn(), rp.TransferSpeedColumn(), rp.TimeRemainingColumn()),
    }[kind]
    return rp.Progress(*ahead, *columns, console=console or Console(stderr=True), transient=False, disable=disable)


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
        self._bar = rich_bars("steps", self.console)
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


class ByteBars:
    """A download's bars: one for the whole run and one per file while it transfers (``rich_bars("bytes")``)."""

    def __init__(self, total: int, done: int, label: str, enabled: bool = True):
        self.progress = rich_bars("bytes", disable=not enabled)
        self.overall = self.progress.add_task(label, total=total, completed=done)

    def __enter__(self) -> ByteBars:
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def advance(self, n: int) -> None:
        self.progress.advance(self.overall, n)

    def file_bar(self, name: str) -> Callable[..., _FileBar]:
        """A ``tqdm_class`` for huggingface_hub's ``http_get``: it calls it with tqdm's keyword arguments."""

        def make(*, total: int | None = None, initial: int = 0, **_: object) -> _FileBar:
            return _FileBar(self, name, total, initial)

        return make


class _FileBar:
    def __init__(self, owner: ByteBars, name: str, total: int | None, initial: int):
        self.owner = owner
        self.task = owner.progress.add_task(f"  {name}", total=total, completed=initial)

    def update(self, n: int = 1) -> None:
        self.owner.progress.advance(self.task, n)
        self.owner.advance(n)

    def close(self) -> None:
        self.owner.progress.update(self.task, visible=False)

    def __enter__(self) -> _FileBar:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def stderr_is_interactive() -> bool:
    return sys.stderr.isatty()
