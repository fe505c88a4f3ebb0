"""Facts about the machine a benchmark ran on that torch does not give: the disk under a path, and dropping a
file's pages from the page cache (so that the next read comes from the disk). No torch import."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


def disk_of(path: Path) -> dict:
    """The mount, filesystem and block device (with its model, where sysfs names it) holding ``path``."""
    path = Path(path).resolve()
    best = ("", "", "")
    for line in Path("/proc/mounts").read_text().splitlines():
        dev, mnt, fs = line.split()[:3]
        if (str(path) + "/").startswith(mnt.rstrip("/") + "/") and len(mnt) > len(best[1]):
            best = (dev, mnt, fs)
    dev, mnt, fs = best
    info = {"device": dev, "mount": mnt, "filesystem": fs}
    name = Path(dev).name
    for candidate in (name, name.rstrip("0123456789").removesuffix("p") if name.startswith("nvme") else
                      name.rstrip("0123456789")):
        model = Path(f"/sys/block/{candidate}/device/model")
        if model.exists():
            info["model"] = model.read_text().strip()
            rotational = Path(f"/sys/block/{candidate}/queue/rotational")
            if rotational.exists():
                info["rotational"] = rotational.read_text().strip() == "1"
            break
    st = os.statvfs(path)
    info["free_bytes"] = st.f_bavail * st.f_frsize
    return info


def drop_page_cache(path: Path) -> None:
    """Write ``path``'s dirty pages out, then drop its pages from the page cache (``POSIX_FADV_DONTNEED``; clean
    pages only, which is why it syncs first). Pages another process still maps stay."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def gpu_name() -> str:
    """The first GPU's name from nvidia-smi (no CUDA context in this process), or "cpu"."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "cpu"
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else "cpu"


def memory_cgroup(name: str, limit: int) -> Path | None:
    """A cgroup v2 with ``memory.max = limit`` for a child to join (write its pid to ``cgroup.procs``): a child of
    this process's cgroup, else one under the root (the memory controller enabled there first); None where this
    process can make neither. The limit counts the page cache the member's reads fill, and its pinned memory."""
    line = next((ln for ln in Path("/proc/self/cgroup").read_text().splitlines() if ln.startswith("0::")), None)
    if line is None:
        return None
    root = Path("/sys/fs/cgroup")
    for parent in (root / line[3:].strip("/"), root):
        group = parent / f"cosmos-bench-{os.getpid()}-{name}"
        try:
            if "memory" not in (parent / "cgroup.subtree_control").read_text().split():
                (parent / "cgroup.subtree_control").write_text("+memory")
            group.mkdir(exist_ok=True)
            (group / "memory.max").write_text(str(limit))
            return group
        except OSError:
            continue
    return None


def cgroup_peak(group: Path) -> int | None:
    """The cgroup's ``memory.peak`` (its whole charge's high-water mark, page cache included; None where the
    kernel has no such file)."""
    try:
        return int((group / "memory.peak").read_text())
    except (OSError, ValueError):
        return None


def remove_cgroup(group: Path | None) -> None:
    """Remove a cgroup made by :func:`memory_cgroup` once its members have exited (left in place if it cannot)."""
    if group is not None:
        try:
            group.rmdir()
        except OSError:
            pass


def rss_fields(pid: int) -> dict[str, int] | None:
    """RssAnon / RssFile / RssShmem / VmHWM of ``pid`` in bytes (None once it has gone)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("RssAnon", "RssFile", "RssShmem", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out
