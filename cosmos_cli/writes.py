"""Writing a batch line's files in the background, so that the next line starts while its video is encoded.

A pipeline hands its last stage (the H.264 encoding and the writes of the video and prompt files to their staged
paths) to :meth:`WriteSlot.submit` instead of running it; :class:`BackgroundWriter` runs it on a thread of its
own and returns at once. One write runs at a time: a line's submit first waits for the line before's write, so at
most one video's frames wait in host memory. The batch commits a line (renames its staged files into place and
writes its sidecar) only after :meth:`WriteSlot.wait` has returned, after the next line's generation: a process
killed in between leaves only staged files, and the line runs again on resume, as if killed while generating.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class PendingWrite:
    """One write running on its own thread; :meth:`wait` joins it, re-raising what it raised."""

    def __init__(self, write: Callable[[], None]):
        self.seconds: float | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(write,), name="cosmos-write", daemon=True)
        self._thread.start()

    def _run(self, write: Callable[[], None]) -> None:
        t0 = time.perf_counter()
        try:
            write()
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread, which records it
            self._error = exc
        self.seconds = time.perf_counter() - t0

    def join(self) -> None:
        self._thread.join()

    def wait(self) -> float:
        """The write's seconds, once it has finished; its exception if it raised one."""
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self.seconds is not None
        return self.seconds


class BackgroundWriter:
    """Runs one write at a time in the background (see the module doc); :meth:`slot` gives each line its own."""

    def __init__(self) -> None:
        self._last: PendingWrite | None = None

    def slot(self) -> WriteSlot:
        return WriteSlot(self)

    def start(self, write: Callable[[], None]) -> PendingWrite:
        if self._last is not None:
            self._last.join()  # one at a time (its outcome stays with its own line's slot)
        self._last = PendingWrite(write)
        return self._last

    def drain(self) -> None:
        """Wait for the write in flight, if any (its outcome stays with its line)."""
        if self._last is not None:
            self._last.join()


class WriteSlot:
    """A line's place in a :class:`BackgroundWriter`: what ``Pipeline.generate(..., writes=)`` receives."""

    def __init__(self, writer: BackgroundWriter):
        self._writer = writer
        self.pending: PendingWrite | None = None

    def submit(self, write: Callable[[], None]) -> None:
        """Run ``write`` (the pipeline's last stage: its files, to the staged paths it was given) in the
        background; the call returns at once, after the line before's write has finished."""
        if self.pending is not None:
            raise RuntimeError("a line's files are written by one call of WriteSlot.submit")
        self.pending = self._writer.start(write)

    def wait(self) -> float | None:
        """Seconds the write took (None: nothing was submitted), once it has finished; what it raised if it failed."""
        return None if self.pending is None else self.pending.wait()
