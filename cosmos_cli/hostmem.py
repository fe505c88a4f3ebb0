"""Host memory available to this process: ``/proc/meminfo`` and the cgroup (v2 or v1) limit, without torch.

What the planner may count on is the smaller of two readings:

* the machine's ``MemAvailable`` (``/proc/meminfo``: free memory plus the page cache and slab the kernel can drop);
* under a cgroup memory limit (a container, a systemd slice, a batch scheduler), the limit less what the cgroup
  uses that cannot be reclaimed: ``memory.current`` less its reclaimable page cache (v2: ``memory.max``,
  ``memory.current``, ``memory.stat`` ``file`` less ``shmem``; v1: ``memory.limit_in_bytes``,
  ``memory.usage_in_bytes``, ``memory.stat`` ``total_cache`` less ``total_shmem``, and its
  ``hierarchical_memory_limit``, the tightest limit of its ancestors). The cgroup of this process
  (``/proc/self/cgroup``) and each of its ancestors are read, since a parent's limit binds too; inside a container
  the namespaced root ``/sys/fs/cgroup`` is the container's own cgroup, so it is read as well.

Every reader takes ``root`` (``/`` by default) so that the tests can give it a fake tree of files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# cgroup v1 writes "no limit" as the largest page-aligned 63-bit number; anything at or above this is no limit.
_V1_NO_LIMIT = 1 << 62


@dataclass(frozen=True)
class HostMemory:
    total_bytes: int  # MemTotal
    available_bytes: int  # what the planner may use: min(MemAvailable, every cgroup's limit less its usage)
    limit_bytes: int | None  # the tightest cgroup limit, if any
    source: str  # which reading gave available_bytes, for the messages


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _stat(text: str | None) -> dict[str, int]:
    out = {}
    for line in (text or "").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit():
            out[parts[0]] = int(parts[1])
    return out


def meminfo(root: Path = Path("/")) -> dict[str, int] | None:
    """``/proc/meminfo`` in bytes (None where there is none: not Linux)."""
    text = _read(root / "proc/meminfo")
    if text is None:
        return None
    out = {}
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        fields = rest.split()
        if fields and fields[0].isdigit():
            out[name.strip()] = int(fields[0]) * (1024 if fields[1:] == ["kB"] else 1)
    return out


def _cgroup_dirs(root: Path) -> list[tuple[str, Path]]:
    """(version, folder) of every cgroup level that may limit this process, leaf first, then the mount roots."""
    base = root / "sys/fs/cgroup"
    found: list[tuple[str, Path]] = []
    for line in (_read(root / "proc/self/cgroup") or "").splitlines():
        fields = line.split(":", 2)
        if len(fields) != 3:
            continue
        _, controllers, rel = fields
        if controllers == "":
            version, mount = "v2", base
        elif "memory" in controllers.split(","):
            version, mount = "v1", base / "memory"
        else:
            continue
        parts = [p for p in rel.strip().split("/") if p]
        for n in range(len(parts), 0, -1):
            found.append((version, mount.joinpath(*parts[:n])))
        found.append((version, mount))
    for version, mount in (("v2", base), ("v1", base / "memory")):
        if (version, mount) not in found:
            found.append((version, mount))
    return found


def cgroup_limits(root: Path = Path("/")) -> list[tuple[int, int, str]]:
    """(limit, available under it, description) of every cgroup level with a memory limit."""
    out = []
    seen: set[Path] = set()
    for version, folder in _cgroup_dirs(root):
        if folder in seen:
            continue
        seen.add(folder)
        if version == "v2":
            limit_text, usage_text = _read(folder / "memory.max"), _read(folder / "memory.current")
            stat = _stat(_read(folder / "memory.stat"))
            cache = stat.get("file", 0) - stat.get("shmem", 0)
            name = "memory.max"
        else:
            limit_text, usage_text = _read(folder / "memory.limit_in_bytes"), _read(folder / "memory.usage_in_bytes")
            stat = _stat(_read(folder / "memory.stat"))
            cache = (stat.get("total_cache", stat.get("cache", 0))
                     - stat.get("total_shmem", stat.get("shmem", 0)))
            name = "memory.limit_in_bytes"
        limit = int(limit_text.strip()) if limit_text and limit_text.strip().isdigit() else None  # "max": none
        if version == "v1" and stat.get("hierarchical_memory_limit") is not None:  # an ancestor's limit, seen here
            limit = min(limit if limit is not None else 1 << 63, stat["hierarchical_memory_limit"])
        if limit is None:
            continue
        if limit >= _V1_NO_LIMIT:
            continue
        usage = int(usage_text.strip()) if usage_text and usage_text.strip().isdigit() else 0
        available = max(0, limit - max(0, usage - max(0, cache)))
        out.append((limit, available, f"cgroup {version} {name} {folder.relative_to(root)}"))
    return out


def detect_host_memory(root: Path = Path("/")) -> HostMemory | None:
    """What host memory this process may use (None where ``/proc/meminfo`` cannot be read)."""
    info = meminfo(root)
    if not info or "MemTotal" not in info:
        return None
    available = info.get("MemAvailable", info.get("MemFree", 0))
    source = "MemAvailable (/proc/meminfo)"
    limits = cgroup_limits(root)
    for _, avail, where in limits:
        if avail < available:
            available, source = avail, where
    limit = min((lim for lim, _, _ in limits), default=None)
    return HostMemory(info["MemTotal"], available, limit, source)


def available_host_bytes() -> int | None:
    """The host memory the planner plans with (None: unknown)."""
    mem = detect_host_memory()
    return None if mem is None else mem.available_bytes
