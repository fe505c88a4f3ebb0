"""The Predict1 backend's own options (``--numerics``, ``--cp-scheme``, ``--attention``), typed and checked before
anything loads.

Importing this module imports no torch: the choices are written here, and a test checks that they are the
sampler's (``sampler.NUMERICS``), the context-parallel layout's (``parallel.SCHEMES``) and :mod:`.flash4`'s.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cosmos_cli.backend import Backend
from cosmos_cli.errors import UsageError

NUMERICS = ("fp32", "original")  # fp32: as the model was trained (default); original: the original script's bf16
CP_SCHEMES = ("auto", "sequence", "cfg")  # how --num-gpus N splits a generation (see .parallel)
FLASH4 = "flash-attn-4"  # the --attention value and the package's name (flash4.FLASH4_DIST)
ATTENTION = ("auto", "sdpa", FLASH4)  # the blocks' self-attention kernel (see .flash4)


@dataclass(frozen=True)
class Predict1Options(Backend.Options):
    numerics: str = "fp32"
    cp_scheme: str = "auto"  # auto: COSMOS_CP_SCHEME, else the layout's choice
    attention: str = "auto"  # auto: flash-attn-4 where it is installed and runs here, else PyTorch's SDPA

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
