"""The download's progress bars (rich, on stderr): one per file while it transfers, one for the whole run."""

from __future__ import annotations

from collections.abc import Callable


class _Progress:
    """rich bars on stderr: one per file while it transfers, and one for the whole run."""

    def __init__(self, total: int, done: int, label: str, enabled: bool = True):
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                                 TransferSpeedColumn(), TimeRemainingColumn(),
                                 console=Console(stderr=True), disable=not enabled)
        self.overall = self.progress.add_task(label, total=total, completed=done)

    def __enter__(self) -> _Progress:
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
    def __init__(self, owner: _Progress, name: str, total: int | None, initial: int):
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
