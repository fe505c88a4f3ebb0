"""Fetching a plan: access and disk checked first, each file transferred (resumed), hashed, put in place."""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from cosmos_cli.download.cache import _blob_path, _partial_path, _write_metadata, _written_paths
from cosmos_cli.download.conversions import _run_conversion
from cosmos_cli.download.errors import ChecksumError, DiskSpaceError, DownloadError, HubUnreachableError
from cosmos_cli.download.hub import _Hub, check_inside
from cosmos_cli.download.plan import DONE, PRESENT, DownloadPlan, PlannedFile, human_bytes
from cosmos_cli.download.verify import _mismatches
from cosmos_cli.progress import ByteBars


@dataclass
class DownloadReport:
    fetched: list[str] = field(default_factory=list)  # local paths transferred (fully or the rest of a partial)
    checked: list[str] = field(default_factory=list)  # present files hashed and accepted
    converted: list[str] = field(default_factory=list)
    fetched_bytes: int = 0


def download(plan: DownloadPlan, *, token: str | None = None, progress: bool = True) -> DownloadReport:
    """Fetch, check and convert everything the plan lists; refuse to start without access or disk space."""
    from huggingface_hub import get_token

    for rp in plan.repos:
        if rp.access_error is not None:
            raise rp.access_error
    if not plan.fits:
        raise DiskSpaceError(
            f"not enough disk space in {plan.checkpoint_dir}: the download needs {human_bytes(plan.needed_bytes)}, "
            f"{human_bytes(plan.free_bytes)} is free",
            hint="Free some space, choose another --checkpoint-dir, or leave parts out with --no-upsampler / "
                 "--no-guardrail. `cosmos download --dry-run` lists every file.")
    hub = _Hub(plan.endpoint, token or get_token())
    ckdir = plan.checkpoint_dir
    report = DownloadReport()
    already = sum(f.size - f.bytes_to_fetch for f in plan.files)
    with ByteBars(plan.total_bytes, already, "total", enabled=progress) as bars, _disk_errors(ckdir):
        for f in plan.files:
            _fetch_one(f, ckdir, hub, bars, report)
        for conv in plan.conversions:
            if not conv.done:
                inputs = {f.remote: ckdir / f.local for f in plan.files if f.convert == conv.name}
                _run_conversion(conv, inputs, ckdir)
                report.converted.extend(conv.outputs)
    return report


@contextmanager
def _disk_errors(ckdir: Path) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1)):
            raise DiskSpaceError(f"the disk is full: {exc.filename or ckdir}",
                                 hint="Free some space and run the command again: the partial file is kept "
                                      "and the transfer resumes.") from None
        if isinstance(exc, PermissionError):
            raise DownloadError(f"cannot write {exc.filename or ckdir}: permission denied",
                                hint="Choose a --checkpoint-dir you can write to.") from None
        raise


def _fetch_one(f: PlannedFile, ckdir: Path, hub: _Hub, bars: ByteBars, report: DownloadReport) -> None:
    final = ckdir / f.local
    if f.state == DONE:
        return
    check_inside(ckdir, *_written_paths(ckdir, f))  # again: a link may have appeared since the plan
    if f.state == PRESENT:  # in place but never checked here (a cache entry: a blob without its link)
        have = _blob_path(ckdir, f) if f.hf_cache else final
        if not _mismatches(have, f):
            if f.hf_cache:
                _link_cached(ckdir, f)
            else:
                _write_metadata(ckdir, f)
            report.checked.append(f.local)
            return
        bars.advance(-f.size)
        have.unlink()  # a different file from the Hub's: fetch it again
    partial = _partial_path(ckdir, f)
    partial.parent.mkdir(parents=True, exist_ok=True)
    if not f.hf_cache:  # drop a partial transfer of an older version of the file
        for stale in partial.parent.glob(f"{Path(f.remote).name}.*.incomplete"):
            if stale != partial:
                stale.unlink()
    start = partial.stat().st_size if partial.is_file() else 0
    if start > f.size:
        partial.unlink()
        start = 0
    _transfer(f, partial, start, hub, bars)
    report.fetched.append(f.local)
    report.fetched_bytes += f.size - start
    bad = _mismatches(partial, f)
    if bad:
        partial.unlink()
        raise ChecksumError(f"checksum mismatch for {f.local} ({f.repo}/{f.remote}): {'; '.join(bad)}",
                            hint="The damaged copy was deleted: run the command again to fetch it anew. "
                                 "If it happens again, the file on the Hub differs from the one the spec expects.")
    if f.hf_cache:
        blob = _blob_path(ckdir, f)
        os.replace(partial, blob)
        _link_cached(ckdir, f)
    else:
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(partial, final)
        _write_metadata(ckdir, f)


def _transfer(f: PlannedFile, partial: Path, start: int, hub: _Hub, bars: ByteBars) -> None:
    """Stream the file into ``partial`` from byte ``start`` on (an HTTP Range request when resuming)."""
    from huggingface_hub.errors import HfHubHTTPError
    from huggingface_hub.file_download import http_get

    with open(partial, "ab") as out, hub.errors(f.repo, f.remote, f.revision):
        try:
            http_get(hub.url(f), out, resume_size=start, headers=hub.headers(), expected_size=f.size,
                     displayed_filename=f.remote, tqdm_class=bars.file_bar(f.local))
        except OSError as exc:
            if exc.errno is None and not isinstance(exc, HfHubHTTPError):  # fewer bytes than announced
                raise HubUnreachableError(f"the transfer of {f.repo}/{f.remote} ended early") from None
            raise  # HTTP errors are named by hub.errors, disk errors by _disk_errors


def _link_cached(ckdir: Path, f: PlannedFile) -> None:
    """Make the snapshot entry and the ref, as huggingface_hub's cache has them."""
    blob = _blob_path(ckdir, f)
    pointer = ckdir / f.local
    pointer.parent.mkdir(parents=True, exist_ok=True)
    if pointer.is_symlink() or pointer.exists():
        pointer.unlink()
    try:
        pointer.symlink_to(os.path.relpath(blob, pointer.parent))
    except OSError:  # no symlinks on this filesystem: keep a copy, as huggingface_hub does
        shutil.copyfile(blob, pointer)
    if f.ref != f.revision:  # a branch or tag: record which commit it meant, as huggingface_hub does
        ref = ckdir / f.root / "refs" / f.ref
        ref.parent.mkdir(parents=True, exist_ok=True)
        ref.write_text(f.revision)
