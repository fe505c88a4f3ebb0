"""GPU detection and memory sizes, without importing torch unless it is needed."""

from __future__ import annotations

import re
from dataclasses import dataclass

from cosmos_cli.errors import UsageError

_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 1 << 10, "MIB": 1 << 20, "GIB": 1 << 30, "TIB": 1 << 40, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30,
          "T": 1 << 40}


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    total_bytes: int
    free_bytes: int


def parse_size(text: str, flag: str = "--vram") -> int:
    """``24GB`` (10^9), ``24GiB``/``24G`` (2^30), ``24000MB``. Case-insensitive. A unit is required: a bare ``24``
    could be either GB or GiB (1.7 GiB apart), so it is refused with both spellings in the hint."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", text or "")
    if m and not m.group(2):
        raise UsageError(f"{flag} {text.strip()}: give a unit", hint=f"Write {m.group(1)}GB (10^9 bytes) or "
                                                                    f"{m.group(1)}GiB (2^30 bytes).")
    if not m or m.group(2).upper() not in _UNITS:
        raise UsageError(f"{flag}: cannot read {text!r} as a memory size", hint="Write it like 24GB, 24GiB or 24000MiB.")
    value, unit = float(m.group(1)), m.group(2).upper()
    size = int(value * _UNITS[unit])
    if size <= 0:
        raise UsageError(f"{flag}: the size must be positive, got {text!r}")
    return size


def format_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / (1 << 30):.1f} GiB"


def free_bytes(device: str) -> int:
    """Free memory of one CUDA device (``cuda``, ``cuda:N``) as torch sees it (``torch.cuda.mem_get_info``): the one
    reading `generate` plans with and `memory-plan` shows."""
    import torch

    free, _ = torch.cuda.mem_get_info(torch.device(device))
    return int(free)


def detect_gpus() -> list[GpuInfo]:
    """The visible CUDA GPUs with their total and free memory ([] when there is none), read by torch as `generate`
    reads them (nvidia-smi sees the GPUs that CUDA_VISIBLE_DEVICES hides, and counts memory another way)."""
    import torch

    if not torch.cuda.is_available():
        return []
    gpus = []
    for i in range(torch.cuda.device_count()):
        _, total = torch.cuda.mem_get_info(i)
        gpus.append(GpuInfo(i, torch.cuda.get_device_name(i), int(total), free_bytes(f"cuda:{i}")))
    return gpus


# A stated CPU speed for estimating a run on a machine without a GPU: 1 TFLOP/s of matrix products, about what a
# large many-core server CPU sustains in fp32 (a laptop does a tenth of it). The estimate is a lower bound on the time.
CPU_FLOPS_PER_S = 1e12
# A run on the CPU that is estimated to take longer than this needs --device cpu, given explicitly.
CPU_AUTO_LIMIT_S = 15 * 60


def cpu_seconds(step_flops: float, num_steps: int) -> float:
    """Seconds the sampler's ``num_steps`` steps take at :data:`CPU_FLOPS_PER_S`."""
    return step_flops * num_steps / CPU_FLOPS_PER_S


def format_duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} minutes"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.0f} hours"
    return f"{seconds / 86400:.0f} days"
