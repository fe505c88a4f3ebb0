"""The Predict1 backend's own options (``--numerics``, ``--cp-scheme``, ``--attention``): flags of `generate` and
`batch` (declared here, with their help; the core adds them to the commands), typed and checked before anything
loads.

Importing this module imports no torch: the choices are written here, and a test checks that they are the
sampler's (``sampler.NUMERICS``), the context-parallel layout's (``parallel.SCHEMES``) and :mod:`.flash4`'s.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cosmos_cli.backend import PANEL_MEMORY, PANEL_SAMPLING, PANEL_SPEED, Backend, option
from cosmos_cli.errors import UsageError

NUMERICS = ("fp32", "original")  # fp32: as the model was trained (default); original: the original script's bf16
CP_SCHEMES = ("auto", "sequence", "cfg")  # how --num-gpus N splits a generation (see .parallel)
FLASH4 = "flash-attn-4"  # the --attention value and the package's name (flash4.FLASH4_DIST)
ATTENTION = ("auto", "sdpa", FLASH4)  # the blocks' self-attention kernel (see .flash4)


@dataclass(frozen=True)
class Predict1Options(Backend.Options):
    numerics: str = option(
        "fp32", metavar="MODE", panel=PANEL_SAMPLING,
        help="fp32: fp32 position tables and sampler scalars, as the model was trained (default). original: the "
             "original script's bf16 details, for identical videos.")
    cp_scheme: str = option(  # auto: COSMOS_CP_SCHEME, else the layout's choice
        "auto", metavar="SCHEME", panel=PANEL_MEMORY,
        help="How --num-gpus N splits a generation: auto (cfg when N is even and the memory plan runs the two "
             "guidance branches together, else sequence; the default), sequence (each GPU takes 1/N of the video's "
             "tokens) or cfg (the two guidance branches on two halves of the GPUs).")
    attention: str = option(
        "auto", metavar="KERNEL", panel=PANEL_SPEED,
        help="The network's self-attention kernel: auto (flash-attn-4 where it is installed and has kernels for "
             "this GPU, else PyTorch's SDPA; the default), sdpa, or flash-attn-4 (refused where it cannot run). "
             "Same video within bf16 rounding; --json's details name the kernel used.")

    def __post_init__(self) -> None:
        for flag, value, choices in (("--numerics", self.numerics, NUMERICS),
                                     ("--cp-scheme", self.cp_scheme, CP_SCHEMES),
                                     ("--attention", self.attention, ATTENTION)):
            if value not in choices:
                raise UsageError(f"{flag} must be one of {', '.join(choices)}, got {value!r}",
                                 hint=f"Use {flag} {choices[0]} (the default) or leave it out.")

    def key_params(self) -> dict[str, Any]:
        """The numerics change the video; the split (``cp_scheme``) does not (the ranks compute the same video), nor
        does the attention kernel (the same function, rounded once to bf16 by either: like ``--compile``)."""
        return {"numerics": self.numerics}
