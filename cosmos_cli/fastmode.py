"""Fast mode: opt-in speed options that change the video, each selected on its own (``--fast a,b,c``).

Exact mode (nothing selected) is the default. Every option trades some quality for speed; the cost of each is
measured on the demo model's evaluation set (``benchmarks/bench_fast.py``, README "Fast mode"):

* ``step-cache[=THRESHOLD]``: at each step, compute the network's first block; when its residual has changed by
  less than THRESHOLD (relative L1) since the last fully computed step, skip the other blocks and reuse that
  step's residual of the remaining blocks. Per guidance branch; the first and last steps always compute.
* ``guidance-trunc[=FRACTION]``: in the last FRACTION of the steps, run the prompt's branch only (no guidance,
  so no negative-prompt forward).
* ``fp8``: the transformer blocks' matrix products in FP8 (e4m3) with one scale per weight row and per token,
  through ``torch._scaled_mm``; needs a GPU with FP8 tensor cores (compute capability 8.9+: Ada, Hopper).
  Attention stays bf16.
* ``fp8-sim``: the same FP8 rounding simulated with ordinary matrix products, on any device: no faster (slower),
  for checking FP8's quality where FP8 hardware is missing.

The request carries a parsed :class:`FastMode`; backends interpret it (unsupported options are refused before
any model loads).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from cosmos_cli.errors import UsageError

DEFAULT_STEP_CACHE_THRESHOLD = 0.2
DEFAULT_GUIDANCE_TRUNC_FRACTION = 0.25
FP8_MIN_CAPABILITY = (8, 9)
OPTIONS = ("step-cache", "guidance-trunc", "fp8", "fp8-sim")
FP8_MODES = ("scaled_mm", "simulate")


@dataclass(frozen=True)
class FastMode:
    """Which fast options are on. ``None``/``False`` everywhere is exact mode."""

    step_cache: float | None = None  # relative-change threshold, >= 0
    guidance_trunc: float | None = None  # fraction of the steps, at the end, run without guidance; in [0, 1)
    fp8: str | None = None  # one of FP8_MODES

    def __post_init__(self):
        if self.step_cache is not None and not (math.isfinite(self.step_cache) and self.step_cache >= 0):
            raise UsageError(f"--fast step-cache={self.step_cache}: the threshold must be a number >= 0")
        if self.guidance_trunc is not None and not 0 <= self.guidance_trunc < 1:
            raise UsageError(f"--fast guidance-trunc={self.guidance_trunc}: the fraction must be in [0, 1)",
                             hint="To drop guidance altogether use --guidance 0.")
        if self.fp8 is not None and self.fp8 not in FP8_MODES:
            raise UsageError(f"fp8 mode must be one of {', '.join(FP8_MODES)}, got {self.fp8!r}")

    @property
    def exact(self) -> bool:
        return self.step_cache is None and self.guidance_trunc is None and self.fp8 is None

    def describe(self) -> str:
        """The canonical ``--fast`` value ("" in exact mode): ``parse_fast(m.describe()) == m``."""
        parts = []
        if self.step_cache is not None:
            parts.append(f"step-cache={self.step_cache:g}")
        if self.guidance_trunc is not None:
            parts.append(f"guidance-trunc={self.guidance_trunc:g}")
        if self.fp8 is not None:
            parts.append("fp8" if self.fp8 == "scaled_mm" else "fp8-sim")
        return ",".join(parts)


def parse_fast(text: str | None) -> FastMode:
    """``--fast`` text -> :class:`FastMode`: comma-separated ``name`` or ``name=value`` (None, "" or "none": exact).

    >>> parse_fast("step-cache,guidance-trunc=0.3")
    FastMode(step_cache=0.2, guidance_trunc=0.3, fp8=None)
    """
    if text is None or text.strip().lower() in ("", "none", "off"):
        return FastMode()
    values: dict[str, float | None] = {}
    for item in text.split(","):
        name, eq, value = (s.strip() for s in item.partition("="))
        name = name.lower().replace("_", "-")
        if name not in OPTIONS:
            raise UsageError(f"--fast: unknown option {name or item!r}; choose from {', '.join(OPTIONS)}",
                             hint="Example: --fast step-cache,guidance-trunc=0.25")
        if name in values:
            raise UsageError(f"--fast: {name} is given twice")
        if name in ("fp8", "fp8-sim"):
            if eq:
                raise UsageError(f"--fast: {name} takes no value, got {name}={value}")
            values[name] = None
            continue
        if eq:
            try:
                values[name] = float(value)
            except ValueError:
                raise UsageError(f"--fast: {name}={value}: the value must be a number") from None
        else:
            values[name] = DEFAULT_STEP_CACHE_THRESHOLD if name == "step-cache" else DEFAULT_GUIDANCE_TRUNC_FRACTION
    if "fp8" in values and "fp8-sim" in values:
        raise UsageError("--fast: choose fp8 or fp8-sim, not both")
    fp8 = "scaled_mm" if "fp8" in values else "simulate" if "fp8-sim" in values else None
    return FastMode(step_cache=values.get("step-cache"), guidance_trunc=values.get("guidance-trunc"), fp8=fp8)


def check_fast(fast: FastMode, device: str, num_gpus: int = 1) -> None:
    """Refuse a fast mode the device or run cannot do, before any model loads (``device``: cpu, cuda, cuda:N)."""
    if fast.exact:
        return
    if num_gpus > 1:
        raise UsageError(f"--fast {fast.describe()} is not available with --num-gpus > 1 (context parallelism)",
                         hint="Run the fast mode on one GPU, or leave --fast out.")
    if fast.fp8 != "scaled_mm":
        return
    hint = "Leave fp8 out, or use fp8-sim to check FP8's quality on this device (slower, not faster)."
    if not device.startswith("cuda"):
        raise UsageError(f"--fast fp8 needs a GPU with FP8 tensor cores (compute capability 8.9+); "
                         f"the device is {device}", hint=hint)
    import torch

    cap = torch.cuda.get_device_capability(torch.device(device))
    if tuple(cap) < FP8_MIN_CAPABILITY:
        name = torch.cuda.get_device_name(torch.device(device))
        raise UsageError(f"--fast fp8 needs compute capability 8.9+ (Ada, Hopper); {name} has "
                         f"{cap[0]}.{cap[1]}", hint=hint)
