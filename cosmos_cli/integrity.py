"""Pinned checksums checked at load time, remembered by (size, mtime) so that a second run pays nothing.

A model spec pins the MD5 of some released files (``CheckpointFile.md5``: the original download script's
checksums); ``cosmos download`` checks them after a transfer, and :func:`verify_pinned` checks them again when
a file is loaded, so a file that was replaced or damaged after its download is found before its weights are used.
Files whose checksum is not pinned (fixture checkpoints, the demo model, most Hub files) are not checked.

The digest of each file is cached in ``<cache>/checksums.json`` (``$COSMOS_CACHE_DIR``, else
``$XDG_CACHE_HOME/cosmos``, else ``~/.cache/cosmos``), keyed by the file's resolved path and valid while its size
and modification time (ns) are unchanged. A cache that cannot be read or written only costs the hashing again.
The cache guards against accidents (a truncated copy, a swapped file), not against someone who can write both
the file and its modification time.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from .errors import CheckpointError

CACHE_FILE = "checksums.json"
_CHUNK = 8 << 20


def cache_dir() -> Path:
    if os.environ.get("COSMOS_CACHE_DIR"):
        return Path(os.environ["COSMOS_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "cosmos"


def _read_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_cache(path: Path, data: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".checksums.", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except OSError:
        pass  # the cache is an optimisation only


def md5_of(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def file_md5(path: Path) -> str:
    """The MD5 of ``path``, from the cache when its size and mtime match the cached entry's."""
    path = Path(path)
    st = path.stat()
    key = str(path.resolve())
    cache_path = cache_dir() / CACHE_FILE
    cache = _read_cache(cache_path)
    entry = cache.get(key)
    if isinstance(entry, dict) and entry.get("size") == st.st_size and entry.get("mtime_ns") == st.st_mtime_ns \
            and isinstance(entry.get("md5"), str):
        return entry["md5"]
    digest = md5_of(path)
    cache = _read_cache(cache_path)  # re-read: another run may have added entries meanwhile
    cache[key] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "md5": digest}
    _write_cache(cache_path, cache)
    return digest


def verify_pinned(path: Path, md5: str | None) -> None:
    """Raise :class:`CheckpointError` if ``path``'s MD5 is not the pinned ``md5``; nothing when none is pinned."""
    if not md5:
        return
    got = file_md5(path)
    if got != md5.lower():
        raise CheckpointError(
            f"{path}: checksum mismatch: MD5 {got}, the released file's is {md5.lower()} "
            "(damaged, truncated or replaced)",
            hint="Delete the file and run `cosmos download --model <name>` to fetch the released one again.")
