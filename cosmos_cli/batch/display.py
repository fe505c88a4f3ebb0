"""Batch progress: the events a running item emits, and their display on stderr."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, NamedTuple

from cosmos_cli.progress import Progress, rich_bars

if TYPE_CHECKING:
    from cosmos_cli.batch.report import ItemRecord

class Event(NamedTuple):
    """What a running item tells the batch's parent process (through a queue, so it pickles).

    ``kind`` and its ``data``: ``start`` (line, name), ``stage`` (name), ``stage_done`` (name, seconds), ``steps``
    (total, label), ``advance`` (n), ``message``/``warning`` (text), ``record`` (the item's ``ItemRecord``); a worker
    process also sends ``interrupted`` (SIGTERM?), ``fatal`` (error class, message, hint) and ``exit`` ()."""

    kind: str
    slot: int
    data: tuple = ()


class EventProgress(Progress):
    """A :class:`Progress` that turns the pipeline's progress calls into events for :class:`BatchDisplay`."""

    def __init__(self, emit: Callable[[Event], None], slot: int):
        self.emit, self.slot = emit, slot

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self.emit(Event("stage", self.slot, (name,)))
        t0 = time.perf_counter()
        yield
        self.emit(Event("stage_done", self.slot, (name, time.perf_counter() - t0)))

    def steps(self, total: int, label: str):
        self.emit(Event("steps", self.slot, (total, label)))
        return lambda n=1: self.emit(Event("advance", self.slot, (n,)))

    def message(self, text: str) -> None:
        self.emit(Event("message", self.slot, (text,)))

    def warning(self, text: str) -> None:
        self.emit(Event("warning", self.slot, (text,)))


class BatchDisplay:
    """Batch progress on stderr.

    ``rich``: one live display with the items bar (done, failed, ETA) and one bar per worker for its current
    item's denoising steps. ``lines``: one line per finished item (logs, pipes). ``quiet``: warnings only
    (``--json``). ``off``: nothing (torchrun ranks other than 0).
    """

    def __init__(self, mode: str = "lines", labels: dict[int, str] | None = None, *, drop_notes: bool = False):
        self.mode, self.labels, self.drop_notes = mode, labels or {}, drop_notes
        self.total = self.done = self.failed = 0
        self.current: dict[int, str] = {}
        self._bar = None
        self._items_task = None
        self._slot_tasks: dict[int, Any] = {}

    # -- output ---------------------------------------------------------------------------------------------

    def _print(self, text: str, style: str | None = None) -> None:
        if self._bar is not None:
            self._bar.console.print(text, style=style, markup=False, highlight=False)
        else:
            print(text, file=sys.stderr, flush=True)

    def warning(self, text: str) -> None:
        if self.mode != "off" and not (self.drop_notes and text.startswith("note:")):  # --quiet drops the notes
            self._print(text, "yellow")

    def message(self, text: str) -> None:
        if self.mode in ("rich", "lines"):
            self._print(text)

    def start(self, total: int) -> None:
        self.total = total
        if self.mode != "rich" or total == 0:
            return
        self._bar = rich_bars("items")
        self._bar.start()
        self._items_task = self._bar.add_task("items", total=total, info="")

    def close(self) -> None:
        if self._bar is not None:
            for task in self._slot_tasks.values():  # the final display keeps the items bar only
                self._bar.remove_task(task)
            self._bar.stop()
            self._bar = None

    # -- events ---------------------------------------------------------------------------------------------

    def _slot_task(self, slot: int):
        if self._bar is None:
            return None
        if slot not in self._slot_tasks:
            self._slot_tasks[slot] = self._bar.add_task("", total=None, info="")
        return self._slot_tasks[slot]

    def _label(self, slot: int) -> str:
        return f"[{self.labels[slot]}] " if len(self.labels) > 1 and slot in self.labels else ""

    def handle(self, event: Event) -> None:
        kind, slot, data = event
        task = self._slot_task(slot)
        if kind == "message":
            self.message(self._label(slot) + data[0])
        elif kind == "warning":
            self.warning(self._label(slot) + data[0])
        elif kind == "start":
            self.current[slot] = data[1]
            if task is not None:
                self._bar.reset(task, total=None, description=f"  {self._label(slot)}{data[1]}")
        elif kind == "stage" and task is not None:
            name = self.current.get(slot, "loading")
            self._bar.update(task, description=f"  {self._label(slot)}{name}: {data[0]}")
        elif kind == "stage_done" and slot not in self.current and self.mode == "lines":
            self._print(f"{self._label(slot)}done {data[0]} ({data[1]:.1f} s)")
        elif kind == "steps" and task is not None:
            name = self.current.get(slot, "")
            self._bar.reset(task, total=data[0], description=f"  {self._label(slot)}{name}: {data[1]}")
        elif kind == "advance" and task is not None:
            self._bar.advance(task, data[0])
        elif kind == "record":
            self.finished(data[0])
            if self.current.get(slot) == data[0].name:  # (a line written in the background ends after the next starts)
                self.current.pop(slot)

    def finished(self, rec: ItemRecord) -> None:
        self.done += 1
        self.failed += not rec.has_output
        if self._bar is not None:
            self._bar.update(self._items_task, advance=1, info=f"{self.failed} failed" if self.failed else "")
            if not rec.has_output:
                self._print(f"line {rec.line} ({rec.name}): {rec.status}: {rec.message}", "red")
        elif self.mode == "lines":
            secs = rec.timings.get("total")
            took = f" in {secs:.1f} s" if secs is not None else ""
            tail = f": {rec.message}" if rec.message else ""
            where = f" -> {rec.video}" if rec.status == "ok" else ""
            self._print(f"[{self.done}/{self.total}] line {rec.line} ({rec.name}): {rec.status}{took}{where}{tail}")
