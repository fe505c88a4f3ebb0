"""Output folders and names, safe against a second run and a killed one.

* :func:`check_folder` / :func:`make_folder`: an output folder whose path runs through a file, or that cannot be
  created or written, is one line before any model loads (the write itself would come minutes later).
* :func:`reserve_name`: ``cosmos generate`` reserves ``NAME`` by holding an exclusive ``flock`` on a hidden
  ``.NAME.reserved`` file in the output folder, so two runs without ``--video-save-name`` never both pick
  ``output``; the kernel drops the lock when a process dies, so a killed run never leaves a name taken.
* :func:`lock_folder`: a batch holds the same kind of lock on ``.cosmos-batch.lock`` for the whole run: a second
  batch writing into the same folder is refused, naming the first one's pid.
* :func:`remove_stale_partials`: temporary files of this tool (``.TARGET.PID-XXXXXXXXXXXX.partial``, see
  :func:`cosmos_cli.media.write_text`) whose process is gone are removed when the next run starts.
* :func:`check_report_path`: ``--report`` may only replace a batch report of this tool.

Locks are advisory ``fcntl.flock`` locks (Linux, macOS); the lock file holds the holder's pid, for the message.
"""

from __future__ import annotations

import errno
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from cosmos_cli.errors import CosmosError, OutputExistsError, UsageError

BATCH_LOCK_NAME = ".cosmos-batch.lock"
REPORT_MARKER = "cosmos_batch_report"  # a key every batch report of this tool carries
PARTIAL_RE = re.compile(r"^\..+\.(?P<pid>\d+)-[0-9a-f]{12}\.partial$")
REPORT_MAX_BYTES = 256 << 20  # a larger file is not a report of ours (and is not read to find out)


class OutputFolderError(CosmosError):
    """An output folder or file that cannot be created or written."""

    default_hint = "Choose a writable folder with -o / --video-save-folder."


class FolderBusy(CosmosError):
    """Another running process of this tool is writing the same output."""


def _why(err: OSError) -> str:
    return err.strerror or type(err).__name__


def check_folder(folder: Path, flag: str) -> None:
    """Refuse a folder path that cannot be a folder: it, or the first existing folder above it, is a file."""
    p = Path(folder)
    while True:
        if p.exists() or p.is_symlink():
            if not p.is_dir():
                what = f"{folder} is a file" if p == Path(folder) else f"{p} is a file, so {folder} cannot be a folder"
                raise UsageError(f"{flag} {folder}: {what}", hint=f"Choose a folder for {flag}.")
            return
        if p.parent == p:
            return
        p = p.parent


def make_folder(folder: Path, flag: str) -> list[Path]:
    """Create ``folder`` (and its parents) if missing; returns the folders created, deepest first, so that a run
    that stops before writing anything can remove them again (:func:`remove_empty`)."""
    check_folder(folder, flag)
    created: list[Path] = []
    p = Path(folder)
    while not p.exists():
        created.append(p)
        p = p.parent
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputFolderError(f"{flag} {folder}: cannot create the folder: {_why(err)}") from None
    return created


def remove_empty(folders: list[Path]) -> None:
    """Remove each of ``folders`` (deepest first) that is empty; leave the others."""
    for f in folders:
        try:
            f.rmdir()
        except OSError:
            return


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def remove_stale_partials(folder: Path) -> list[Path]:
    """Remove this tool's temporary ``.partial`` files in ``folder`` whose writing process no longer runs."""
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        m = PARTIAL_RE.match(entry.name)
        if m is None or not entry.is_file(follow_symlinks=False) or pid_alive(int(m["pid"])):
            continue
        try:
            os.unlink(entry.path)
            removed.append(Path(entry.path))
        except OSError:
            pass
    return removed


@dataclass
class Lock:
    """An exclusive ``flock`` on ``path``, held until :meth:`release` (or the process ends)."""

    path: Path
    fd: int
    created_folders: list[Path] = field(default_factory=list)

    def release(self, remove_file: bool = True) -> None:
        if self.fd < 0:
            return
        if remove_file:  # unlink while still locked: a process that opened it waits on a file no longer there
            try:
                os.unlink(self.path)
            except OSError:
                pass
        os.close(self.fd)
        self.fd = -1


def holder_pid(path: Path) -> int | None:
    try:
        text = Path(path).read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def try_lock(path: Path) -> Lock | None:
    """Take the exclusive lock on ``path`` (created if missing) without waiting; None if another process holds it.

    After the lock is taken, the file must still be the one at ``path`` (a holder that finished unlinks it before
    letting go): otherwise try again on the new file."""
    import fcntl

    for _ in range(20):
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except OSError as err:
            os.close(fd)
            if err.errno in (errno.EAGAIN, errno.EACCES):
                return None
            raise
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            continue
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
        return Lock(Path(path), fd)
    return None


def lock_folder(folder: Path, flag: str = "--output-dir") -> Lock:
    """The batch lock on ``folder`` (created if missing; also the check that it is writable)."""
    created = make_folder(folder, flag)
    path = Path(folder) / BATCH_LOCK_NAME
    try:
        lock = try_lock(path)
    except OSError as err:
        remove_empty(created)
        raise OutputFolderError(f"{flag} {folder}: cannot write in the folder: {_why(err)}") from None
    if lock is None:
        pid = holder_pid(path)
        raise FolderBusy(f"{flag} {folder}: another batch is writing here" + (f" (pid {pid})" if pid else ""),
                         hint="Wait for it to finish, or choose another --output-dir.")
    lock.created_folders = created
    remove_stale_partials(folder)  # (a killed `generate` into this folder, say)
    return lock


def _taken(folder: Path, name: str) -> bool:
    return (folder / f"{name}.mp4").exists() or (folder / f"{name}.txt").exists()


def reserve_name(folder: Path, name: str | None, overwrite: bool, flag: str = "--video-save-folder") -> Lock:
    """Reserve an output name in ``folder`` (created if missing): ``name``, or the first free ``output``,
    ``output_1``, ... A name is free when neither ``NAME.mp4`` nor ``NAME.txt`` exists (unless ``overwrite``
    with an explicit name) and no other run holds its reservation. Returns the held lock; ``lock.path`` is
    ``folder/.NAME.reserved``."""
    created = make_folder(folder, flag)
    try:
        remove_stale_partials(folder)
        candidates = [name] if name is not None else (("output" if i == 0 else f"output_{i}") for i in range(100000))
        for stem in candidates:
            if name is None and _taken(folder, stem):
                continue
            path = folder / f".{stem}.reserved"
            try:
                lock = try_lock(path)
            except OSError as err:
                raise OutputFolderError(f"{flag} {folder}: cannot write in the folder: {_why(err)}") from None
            if lock is None:
                if name is None:
                    continue
                pid = holder_pid(path)
                raise FolderBusy(f"{folder / (stem + '.mp4')}: another cosmos run"
                                 + (f" (pid {pid})" if pid else "") + " is writing it",
                                 hint="Wait for it to finish, or choose another --video-save-name.")
            if _taken(folder, stem) and not (overwrite and name is not None):
                lock.release()
                if name is None:  # finished by a run that just let go of it
                    continue
                existing = [f"{stem}.{ext}" for ext in ("mp4", "txt") if (folder / f"{stem}.{ext}").exists()]
                raise OutputExistsError(f"{folder}: {' and '.join(existing)} already exist"
                                        if len(existing) > 1 else f"{folder / existing[0]} already exists")
            lock.created_folders = created
            return lock
        raise OutputExistsError(f"{folder}: no free output name")
    except BaseException:
        remove_empty(created)
        raise


def reserved_stem(lock: Lock) -> str:
    return lock.path.name[1:].removesuffix(".reserved")


@contextmanager
def released(lock: Lock | None, *, keep_folders: bool) -> Iterator[None]:
    """Release ``lock`` when the block ends; remove the folders it created when they are still empty and the
    block failed (``keep_folders`` False)."""
    try:
        yield
    finally:
        if lock is not None:
            lock.release()
            if not keep_folders:
                remove_empty(lock.created_folders)


def is_report(path: Path) -> bool:
    """Whether ``path`` holds a batch report of this tool (the only kind of file --report may replace)."""
    try:
        if not path.is_file() or path.stat().st_size > REPORT_MAX_BYTES:
            return False
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(data, dict):
        return False
    # reports written before the marker existed: the keys every one of them has
    return data.get(REPORT_MARKER) is not None or {"batch_file", "counts", "items", "exit_code"} <= set(data)


def check_report_path(path: Path, batch_file: Path) -> list[Path]:
    """Refuse a --report path that is not a report of ours or cannot be written; returns folders it created."""
    path = Path(path)
    if path.exists() and path.resolve() == Path(batch_file).resolve():
        raise UsageError(f"--report {path} is the batch file itself", hint="Choose another --report path.")
    if path.is_dir():
        raise UsageError(f"--report {path} is a folder", hint="Give the path of a .json file.")
    if path.exists() and not is_report(path):
        raise OutputExistsError(f"--report {path} exists and is not a batch report of cosmos; it is left as it is",
                                hint="Choose another --report path (or remove that file).")
    created = make_folder(path.parent, "--report")
    probe = path.with_name(f".{path.name}.{os.getpid()}-probe")
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        remove_empty(created)
        raise OutputFolderError(f"--report {path}: cannot write in {path.parent}: {_why(err)}",
                                hint="Choose a writable --report path.") from None
    return created
