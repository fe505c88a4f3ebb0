"""The Predict1 backend's own options (``--numerics``, ``--cp-scheme``), typed and checked before anything loads.

Importing this module imports no torch: the choices are written here, and a test checks that they are the
sampler's (``sampler.NUMERICS``) and the context-parallel layout's (``parallel.SCHEMES``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cosmos_cli.backend import Backend
from cosmos_cli.errors import UsageError

NUMERICS = ("fp32", "original")  # fp32: as the model was trained (default); original: the original script's bf16
CP_SCHEMES = ("auto", "sequence", "cfg")  # how --num-gpus N splits a generation (see .parallel)


@dataclass(frozen=True)
class Predict1Options(Backend.Options):
    numerics: str = "fp32"
    cp_scheme: str = "auto"  # auto: COSMOS_CP_SCHEME, else the layout's choice

    def __post_init__(self) -> None:
        for flag, value, choices in (("--numerics", self.numerics, NUMERICS),
                                     ("--cp-scheme", self.cp_scheme, CP_SCHEMES)):
            if value not in choices:
                raise UsageError(f"{flag} must be one of {', '.join(choices)}, got {value!r}",
                                 hint=f"Use {flag} {choices[0]} (the default) or leave it out.")

    def key_params(self) -> dict[str, Any]:
        """The numerics change the video; the split (``cp_scheme``) does not (the ranks compute the same video)."""
        return {"numerics": self.numerics}
