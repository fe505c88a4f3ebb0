"""GPU detection and memory sizes, without importing torch unless it is needed."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass

from cosmos_cli.errors import UsageError

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 1 << 10, "MIB": 1 << 20, "GIB": 1 << 30, "TIB": 1 << 40, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30,
          "T": 1 << 40}


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    total_bytes: int
    free_bytes: int


def parse_size(text: str, flag: str = "--vram") -> int:
    """``24GB`` (10^9), ``24GiB``/``24G`` (2^30), ``24000MB``, ``80`` (GiB when no unit). Case-insensitive."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", text or "")
    if not m or m.group(2).upper() not in _UNITS:
        raise UsageError(f"{flag}: cannot read {text!r} as a memory size", hint="Write it like 24GB, 24GiB or 24000MiB.")
    value, unit = float(m.group(1)), m.group(2).upper()
    scale = _UNITS[unit] if unit else 1 << 30
    size = int(value * scale)
    if size <= 0:
        raise UsageError(f"{flag}: the size must be positive, got {text!r}")
    return size


def format_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / (1 << 30):.1f} GiB"


def _from_nvidia_smi() -> list[GpuInfo] | None:
    exe = shutil.which("nvidia-smi")
    if exe is None or os.environ.get("CUDA_VISIBLE_DEVICES") is not None:
        return None
    try:
        out = subprocess.run([exe, "--query-gpu=index,name,memory.total,memory.free", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    gpus = []
    for row in out.strip().splitlines():
        parts = [p.strip() for p in row.split(",")]
        if len(parts) == 4:
            gpus.append(GpuInfo(int(parts[0]), parts[1], int(parts[2]) << 20, int(parts[3]) << 20))
    return gpus


def _from_torch() -> list[GpuInfo]:
    import torch

    if not torch.cuda.is_available():
        return []
    gpus = []
    for i in range(torch.cuda.device_count()):
        free, total = torch.cuda.mem_get_info(i)
        gpus.append(GpuInfo(i, torch.cuda.get_device_name(i), total, free))
    return gpus


def detect_gpus() -> list[GpuInfo]:
    """The visible CUDA GPUs with their total and free memory ([] when there is none)."""
    found = _from_nvidia_smi()
    return found if found is not None else _from_torch()
