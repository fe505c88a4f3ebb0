"""Where a planned file and its bookkeeping live on disk: huggingface_hub's local-folder records, its cache
layout (blobs, snapshots, refs) and partial transfers."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cosmos_cli.download.plan import PlannedFile

def _cache_folder(repo: str) -> str:
    return "models--" + repo.replace("/", "--")



def _written_paths(ckdir: Path, f: PlannedFile) -> tuple[Path, ...]:
    """Every path a planned file may create: the file, its partial transfer and record (a cache entry: the
    blob, the snapshot link and the ref)."""
    paths = [ckdir / f.local, _partial_path(ckdir, f)]
    if f.hf_cache:
        paths += [_blob_path(ckdir, f), ckdir / f.root / "refs" / f.ref]
    else:
        paths.append(_metadata_path(ckdir, f))
    return tuple(paths)


def _meta_dir(ckdir: Path, f: PlannedFile) -> Path:
    return ckdir / f.root / ".cache" / "huggingface" / "download"


def _metadata_path(ckdir: Path, f: PlannedFile) -> Path:
    return _meta_dir(ckdir, f) / f"{f.remote}.metadata"


def _partial_path(ckdir: Path, f: PlannedFile) -> Path:
    if f.hf_cache:
        return ckdir / f.root / "blobs" / f"{f.etag}.incomplete"
    return _meta_dir(ckdir, f) / f"{f.remote}.{f.etag}.incomplete"


def _blob_path(ckdir: Path, f: PlannedFile) -> Path:
    return ckdir / f.root / "blobs" / f.etag


def _read_metadata(ckdir: Path, f: PlannedFile) -> tuple[str, str, float] | None:
    """huggingface_hub's local-folder record for a file: (commit, etag, time), if any."""
    try:
        commit, etag, stamp = _metadata_path(ckdir, f).read_text().splitlines()[:3]
        return commit.strip(), etag.strip(), float(stamp)
    except (OSError, ValueError):
        return None


def _write_metadata(ckdir: Path, f: PlannedFile) -> None:
    path = _metadata_path(ckdir, f)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{f.revision}\n{f.etag}\n{time.time()}\n")


def _forget(ckdir: Path, f: PlannedFile) -> None:
    """Drop the record that says a file was checked (a cache entry: its snapshot link), so the next download
    hashes it again and fetches it anew if it is still bad."""
    if f.hf_cache:
        (ckdir / f.local).unlink(missing_ok=True)
    else:
        _metadata_path(ckdir, f).unlink(missing_ok=True)
