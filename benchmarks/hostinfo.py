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
